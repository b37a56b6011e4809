"""spark-submit entry point for the whole pipeline (ingest, split, train) under one run id."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
