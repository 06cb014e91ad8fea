import sys

from voucherify_ingest.standin.cli import main

sys.exit(main())
