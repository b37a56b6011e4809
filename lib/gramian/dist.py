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

With `jit_cache=True` (the default here, `python -m gramian.dist` and `make dist-zip`) the zip also carries numba's
compiled kernels: a subprocess imports gramian from the finished zip with an empty user cache folder, runs
`gramian.jit_warmup` (every kernel executors call, with their dtypes) and the cache files it wrote go into the zip
under `gramian/_jitcache/zipped/`. An executor's first import copies them to its own cache folder
(`gramian.kernels._jit_cache`), so a fresh cluster's first half-step loads the kernels instead of compiling them.
They hold machine code for the build machine's CPU, numba version and Python minor version: elsewhere numba
misses, compiles once and caches as before.
"""

from __future__ import annotations

import ast
import os
import py_compile
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
JIT_CACHE = "gramian/_jitcache/zipped"  # numba's cache files in the zip (gramian.kernels._jit_cache reads them)
WARM_UP = ("import sys; sys.path.insert(0, sys.argv[1]); import gramian; "
           "assert gramian.__file__.startswith(sys.argv[1]), gramian.__file__; "
           "from gramian.jit_warmup import warm_up; warm_up()")


def build_zip(target: str | Path = "dist/gramian.zip", jit_cache: bool = True) -> Path:
    """Write lib/gramian (no __pycache__) as `gramian/...` entries of `target`, with byte code beside each module
    without numba functions, and with `jit_cache` numba's compiled kernels (add_jit_cache); return its path."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z, tempfile.TemporaryDirectory() as tmp:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                name = path.relative_to(PACKAGE.parent)
                z.write(path, name)
                if path.suffix == ".py" and not imports_numba(path.read_text()):
                    z.write(byte_code(path, str(name), Path(tmp) / "module.pyc"), name.with_suffix(".pyc"))
    if jit_cache:
        add_jit_cache(target)
    return target


def add_jit_cache(zip_path: Path) -> int:
    """Compile the kernels from `zip_path` in a fresh interpreter (empty numba cache, no PYTHONPATH, cwd /) and add
    the cache files it wrote under JIT_CACHE; return how many files were added."""
    zip_path = Path(zip_path).resolve()
    with tempfile.TemporaryDirectory(prefix="gramian-jit-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "PYTHONPATH": ""}
        done = subprocess.run([sys.executable, "-c", WARM_UP, str(zip_path)], env=env, cwd="/", capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the kernels from {zip_path} failed (exit code {done.returncode}); its "
                               f"stderr ends:\n{done.stderr[-3000:]}\nbuild with jit_cache=False to skip the cache")
        zipped = Path(cache) / "numba" / "zipped"
        files = sorted(p for p in zipped.rglob("*") if p.is_file() and p.suffix in (".nbi", ".nbc"))
        if not files:
            raise RuntimeError(f"compiling the kernels from {zip_path} wrote no numba cache files under {zipped}: "
                               "is gramian.kernels._jit_cache's locator installed?")
        with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as z:
            for path in files:
                z.write(path, f"{JIT_CACHE}/{path.relative_to(zipped).as_posix()}")
    return len(files)


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
