"""spark-submit entry point for the publish stage: `spark-submit jobs/publish.py --run-id R --conf ...`."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["publish", *sys.argv[1:]]))
