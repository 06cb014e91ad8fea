from . import main

main(prog_name="voucherify-ingest")
