"""spark-submit entry point of `gramian generate`, e.g. spark-submit jobs/generate.py --conf conf/synthetic.yaml."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["generate", *sys.argv[1:]]))
