"""Kernels imported from a zip (spark-submit --py-files) reuse numba's compiled code across jobs, and a zip built
with jit_cache=True ships that code so a fresh cluster does not compile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

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
    first, second = build_zip(tmp_path / "app1" / "gramian.zip", jit_cache=False), build_zip(
        tmp_path / "app2" / "gramian.zip", jit_cache=False)
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
    zip_path = build_zip(tmp_path / "gramian.zip", jit_cache=False)
    where = compiled_from(zip_path)
    assert where["job"] == "gramian/train/job.py"  # the byte code built with the zip (source: the zip's path)
    assert where["kernel"] == f"{zip_path}/gramian/kernels/_rows.py"  # compiled here: numba's cache can find it
    assert where["index"] == f"{zip_path}/gramian/retrieval/index.py"


def test_byte_code_of_another_python_is_ignored_for_the_source(tmp_path):
    """Another interpreter's byte code (a different magic number) must not break the import: the source is used."""
    import zipfile

    built = build_zip(tmp_path / "built.zip", jit_cache=False)
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


# ---------------------------------------------------------------- the compiled kernels shipped in the zip

STATS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numba, numpy as np
    import gramian
    assert gramian.__file__.startswith(sys.argv[1]), gramian.__file__
    exec(sys.argv[2])
    hits, misses = {}, {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("gramian.") and ".zip" in (getattr(mod, "__file__", None) or ""):
            for attr, f in vars(mod).items():
                if isinstance(f, numba.core.registry.CPUDispatcher) and f.__module__ == name:
                    hits[name + "." + attr] = sum(f.stats.cache_hits.values())
                    misses[name + "." + attr] = sum(f.stats.cache_misses.values())
    print(json.dumps({"hits": hits, "misses": misses}))
""")


def stats_from(zip_path, cache, code: str) -> dict[str, dict[str, int]]:
    """numba cache hits and misses per kernel of gramian's zipped modules after running `code` in a fresh process."""
    import json

    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", STATS, str(zip_path), code], env=env, capture_output=True, text=True,
                         cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cached_zip(tmp_path_factory):
    """A zip with the compiled kernels (built once: the warm-up compiles for some seconds)."""
    return build_zip(tmp_path_factory.mktemp("built") / "gramian.zip", jit_cache=True)


HALF_STEP = textwrap.dedent("""
    from gramian.kernels import solve_side, observed_loss
    ip = np.array([0, 2, 3], np.int64); ix = np.array([0, 1, 1], np.int32); a = np.ones(3); t = np.ones(3)
    other = np.ones((2, 4), np.float32); x0 = np.zeros((2, 4), np.float32)
    x = solve_side(ip, ix, a, t, other, np.eye(4), 0.1, np.ones(2), x0, solver="cg").astype(np.float32)
    observed_loss(ip, ix, a, t, x, other)
""")


def test_a_copy_of_a_cached_zip_loads_its_kernels_with_an_empty_cache(cached_zip, tmp_path):
    """A fresh executor (empty numba cache) running a half-step's kernels from a copy of the zip compiles nothing."""
    import shutil

    copy = shutil.copy(cached_zip, tmp_path / "elsewhere.zip")
    s = stats_from(copy, tmp_path / "empty-cache", HALF_STEP)
    assert sum(s["misses"].values()) == 0, {k: v for k, v in s["misses"].items() if v}
    assert s["hits"]["gramian.kernels._rows.cg_rows"] == 1
    assert s["hits"]["gramian.kernels._rows.observed_sq_error"] == 1
    assert list((tmp_path / "empty-cache" / "numba" / "zipped" / "gramian_kernels").glob("_rows.cg_rows-*.nbi"))


def test_the_shipped_cache_covers_everything_the_warm_up_calls(cached_zip, tmp_path):
    """Every kernel the warm-up reaches is loaded from the shipped cache: no dispatcher of gramian misses."""
    s = stats_from(cached_zip, tmp_path / "empty-cache", "from gramian.jit_warmup import warm_up; warm_up()")
    assert {k: v for k, v in s["misses"].items() if v} == {}
    for kernel in ("kernels._rows.cholesky_rows", "kernels._rows.cg_rows", "kernels._rows.subspace_rows",
                   "kernels.pairwise._descent_rows", "kernels.pairwise._item_rows", "kernels.pairwise._coupling_rows",
                   "kernels.ranking._count_above", "retrieval.index._drop_history"):
        assert s["hits"]["gramian." + kernel] >= 1, kernel


def shipped_index(zip_path, name: str) -> tuple[str, bytes]:
    """(entry name, bytes) of the shipped cache index whose file name starts with `name`."""
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        entry, = (n for n in z.namelist() if "/_jitcache/" in n and n.rsplit("/", 1)[1].startswith(name)
                  and n.endswith(".nbi"))
        return entry, z.read(entry)


def index_bytes(stamp, overloads: dict) -> bytes:
    """A numba cache index as numba writes it: its version pickled, then (stamp, overloads) pickled."""
    import io
    import pickle

    import numba

    f = io.BytesIO()
    pickle.dump(numba.__version__, f, protocol=-1)
    f.write(pickle.dumps((stamp, overloads)))
    return f.getvalue()


def test_a_stale_local_index_is_replaced_and_a_current_one_kept(cached_zip, tmp_path):
    from gramian.kernels._jit_cache import index_stamp, install_shipped

    entry, shipped = shipped_index(cached_zip, "_rows.cg_rows-")
    folder, base = entry.rsplit("/", 1)[0] + "/", entry.rsplit("/", 1)[1][:-len(".nbi")]
    stale, current = tmp_path / "stale", tmp_path / "current"
    stale.mkdir()
    current.mkdir()
    (stale / f"{base}.nbi").write_bytes(index_bytes(b"another source", {}))
    mine = index_bytes(index_stamp(shipped)[1], {})  # same source, no entries (e.g. compiled for another CPU)
    (current / f"{base}.nbi").write_bytes(mine)

    assert install_shipped(str(cached_zip), folder, str(stale)) > 0
    assert (stale / f"{base}.nbi").read_bytes() == shipped
    assert (stale / f"{base}.1.nbc").is_file()
    assert install_shipped(str(cached_zip), folder, str(current)) > 0  # the other kernels' files are written
    assert (current / f"{base}.nbi").read_bytes() == mine
    assert not list(current.glob(f"{base}.*.nbc"))
    assert not list(stale.glob("*.tmp")) and not list(current.glob("*.tmp"))


def test_installing_never_fails_and_runs_once_per_folder(cached_zip, tmp_path):
    from gramian.kernels._jit_cache import install_shipped

    assert install_shipped(str(tmp_path / "missing.zip"), "gramian/_jitcache/zipped/x/", str(tmp_path)) == 0
    entry, _ = shipped_index(cached_zip, "_rows.cg_rows-")
    folder = entry.rsplit("/", 1)[0] + "/"
    assert install_shipped(str(cached_zip), folder, str(tmp_path / "no-such-folder")) == 0  # unwritable: no error
    (tmp_path / "once").mkdir()
    assert install_shipped(str(cached_zip), folder, str(tmp_path / "once")) > 0
    for f in (tmp_path / "once").iterdir():
        f.unlink()
    assert install_shipped(str(cached_zip), folder, str(tmp_path / "once")) == 0  # done already in this process


def test_a_zip_built_without_the_jit_cache_ships_no_compiled_code(tmp_path):
    import zipfile

    with zipfile.ZipFile(build_zip(tmp_path / "plain.zip", jit_cache=False)) as z:
        assert not [n for n in z.namelist() if "_jitcache" in n]
