"""spark-submit entry point for the train stage: `spark-submit jobs/train.py --conf conf/gowalla.yaml`."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
