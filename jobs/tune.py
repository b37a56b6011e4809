"""spark-submit entry point for the tune stage: `spark-submit jobs/tune.py --conf conf/ml-100k.yaml --trials 20`."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["tune", *sys.argv[1:]]))
