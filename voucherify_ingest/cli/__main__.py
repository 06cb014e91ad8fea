from voucherify_ingest.cli import main

main(prog_name="voucherify-ingest")
