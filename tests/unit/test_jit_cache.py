"""Kernels imported from a zip (spark-submit --py-files) reuse numba's compiled code across jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from gramian.dist import build_zip

CALL = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from gramian.kernels import _rows
    assert ".zip" in _rows.__file__, _rows.__file__
    x = np.ones((2, 3)); ip = np.array([0, 1, 2], np.int64); ix = np.array([0, 1], np.int32); w = np.ones(2)
    _rows.observed_sq_error(ip, ix, w, w, x, x)
    s = _rows.observed_sq_error.stats
    print(json.dumps({"hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}))
""")


def run_from(zip_path, cache) -> dict[str, int]:
    import json

    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", CALL, str(zip_path)], env=env, capture_output=True, text=True,
                         check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_kernel_compiled_from_one_zip_is_loaded_from_numbas_cache_by_a_copy_elsewhere(tmp_path):
    """Spark copies --py-files to a new folder per application: the second copy must find the first's code."""
    first, second = build_zip(tmp_path / "app1" / "gramian.zip"), build_zip(tmp_path / "app2" / "gramian.zip")
    assert run_from(first, tmp_path / "cache") == {"hits": 0, "misses": 1}  # compiled and written
    assert run_from(second, tmp_path / "cache") == {"hits": 1, "misses": 0}  # loaded, not compiled
    assert list((tmp_path / "cache" / "numba" / "zipped" / "gramian_kernels").glob("_rows.observed_sq_error-*"))


WHERE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import gramian.train.job
    from gramian.kernels import _rows
    from gramian.retrieval import index
    print(json.dumps({"job": gramian.train.job.run.__code__.co_filename,
                      "kernel": _rows.observed_sq_error.py_func.__code__.co_filename,
                      "index": index.__file__}))
""")


def compiled_from(zip_path) -> dict[str, str]:
    import json

    out = subprocess.run([sys.executable, "-c", WHERE, str(zip_path)], env={**os.environ, "PYTHONPATH": ""},
                         capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_modules_load_their_shipped_byte_code_and_numba_modules_their_source(tmp_path):
    zip_path = build_zip(tmp_path / "gramian.zip")
    where = compiled_from(zip_path)
    assert where["job"] == "gramian/train/job.py"  # the byte code built with the zip (source: the zip's path)
    assert where["kernel"] == f"{zip_path}/gramian/kernels/_rows.py"  # compiled here: numba's cache can find it
    assert where["index"] == f"{zip_path}/gramian/retrieval/index.py"


def test_byte_code_of_another_python_is_ignored_for_the_source(tmp_path):
    """Another interpreter's byte code (a different magic number) must not break the import: the source is used."""
    import zipfile

    built = build_zip(tmp_path / "built.zip")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"\x00\x00" + data[2:] if info.filename.endswith(".pyc") else data)
    assert compiled_from(other)["job"] == f"{other}/gramian/train/job.py"


def test_a_module_ships_as_source_when_it_imports_numba_not_when_it_names_it():
    """Byte code is left out for modules that import numba (any form), not for ones that only mention it."""
    from gramian.dist import imports_numba

    assert imports_numba("import numba as nb\n\n@nb.jit\ndef f(x):\n    return x\n")
    assert imports_numba("def f():\n    from numba.core import caching\n    return caching\n")
    assert imports_numba("from numba import prange, njit\n")
    assert not imports_numba("# njit would compile this, numba is not used\nx = 'from numba import njit'\n")
    assert not imports_numba("from .numba import helper\n")  # a relative module of the same name
