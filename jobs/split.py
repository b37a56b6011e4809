"""spark-submit entry point of `gramian split`, e.g. spark-submit jobs/split.py --conf conf/synthetic.yaml."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["split", *sys.argv[1:]]))
