"""Package gramian's source as a zip for `spark-submit --py-files` (which takes .zip/.egg/.py, not wheels).

`python -m gramian.dist [dist/gramian.zip]` (or `make dist-zip`). Native dependencies (numpy, numba,
pyarrow, ScaNN) are not in the zip: executors need them preinstalled or shipped with --archives.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def build_zip(target: str | Path = "dist/gramian.zip") -> Path:
    """Write lib/gramian (no __pycache__) as `gramian/...` entries of `target`; return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                z.write(path, path.relative_to(PACKAGE.parent))
    return target


if __name__ == "__main__":
    print(build_zip(*sys.argv[1:2]))
