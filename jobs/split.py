"""spark-submit entry point of `gramian split`, e.g. spark-submit jobs/split.py --conf conf/ml-100k.yaml."""

import sys

from gramian.cli import main

raise SystemExit(main(["split", *sys.argv[1:]]))
