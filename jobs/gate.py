"""spark-submit entry point of `gramian gate`: exit 0 when the run may be published, 3 when it may not."""

import sys

from gramian.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["gate", *sys.argv[1:]]))
