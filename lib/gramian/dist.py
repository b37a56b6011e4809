"""Package gramian's source as a zip for `spark-submit --py-files` (which takes .zip/.egg/.py, not wheels).

`python -m gramian.dist [dist/gramian.zip]` (or `make dist-zip`). Native dependencies (numpy, numba,
pyarrow, ScaNN) are not in the zip: executors need them preinstalled or shipped with --archives.

Every module but the kernels is in the zip twice: its source and its byte code for this interpreter (zipimport
cannot write byte code, so without it every Python worker and the driver compile gramian's modules from source
at each start: about a third of the seconds gramian's import takes in a fresh worker). The byte code is
unchecked-hash (PEP 552), i.e. trusted as built with its source; another Python version ignores it (its magic
number differs) and compiles the source. Modules with numba functions (the kernels, the index's scorer) ship as
source only: numba's on-disk cache finds a function's cache by the path its code was compiled from, which only a
module compiled from the zip has.
"""

from __future__ import annotations

import ast
import py_compile
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def build_zip(target: str | Path = "dist/gramian.zip") -> Path:
    """Write lib/gramian (no __pycache__) as `gramian/...` entries of `target`, with byte code beside each module
    without numba functions; return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z, tempfile.TemporaryDirectory() as tmp:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                name = path.relative_to(PACKAGE.parent)
                z.write(path, name)
                if path.suffix == ".py" and not imports_numba(path.read_text()):
                    z.write(byte_code(path, str(name), Path(tmp) / "module.pyc"), name.with_suffix(".pyc"))
    return target


def imports_numba(source: str) -> bool:
    """Whether a module imports numba (at any depth): its functions may be numba-compiled, so it ships as source."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "numba" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "numba":
            return True
    return False


def byte_code(source: Path, shown_as: str, out: Path) -> Path:
    """`source` compiled to unchecked-hash byte code in `out` (tracebacks name it `shown_as`)."""
    return Path(py_compile.compile(str(source), cfile=str(out), dfile=shown_as, doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH))


if __name__ == "__main__":
    print(build_zip(*sys.argv[1:2]))
