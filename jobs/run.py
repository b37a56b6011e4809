"""spark-submit entry point for the whole pipeline under one run id (stages complete for it are skipped)."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
