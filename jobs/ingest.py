"""spark-submit entry point of `gramian ingest`, e.g. spark-submit jobs/ingest.py --conf conf/synthetic.yaml."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["ingest", *sys.argv[1:]]))
