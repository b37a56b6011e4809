"""spark-submit entry point for the evaluate stage: `spark-submit jobs/evaluate.py --conf conf/gowalla.yaml`."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
