"""spark-submit entry point of `gramian ingest`, e.g. spark-submit jobs/ingest.py --conf conf/ml-100k.yaml."""

import sys

from gramian.cli import main

raise SystemExit(main(["ingest", *sys.argv[1:]]))
