"""Numba's on-disk cache for kernels imported from a zip (spark-submit --py-files), at a stable place.

Numba keys a zipped module's cache folder by the zip's own path, and Spark copies --py-files into a fresh
folder per application, so every cluster job compiled every kernel again in every Python worker (about 10 s
of its first half-step, half a minute on a busy machine). Here a zipped module's cache lives in numba's user
cache folder under its path inside the zip; numba's index still checks the source's content hash (and its
own version), so a changed kernel is compiled again. Not a zip: numba's own locators, unchanged.

A zip built by `gramian.dist.build_zip(jit_cache=True)` also carries the cache files of every kernel executors
call (under `gramian/_jitcache/zipped/<folder>/`). Before numba first reads a cache folder, the shipped files
for it are copied there (`install_shipped`): a fresh cluster's first half-step then loads the kernels instead of
compiling them. Shipped code is for the build machine's CPU: numba's index keys entries by CPU name and
features, so on an executor with another CPU it misses, compiles as before and adds its own entry to the index
(another numba version ignores the shipped files, another Python minor version looks for other file names).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
import zipfile
from typing import Any

import numba
from numba.core import caching

log = logging.getLogger(__name__)

SHIPPED = "_jitcache/zipped"  # inside the zip's top package (gramian.dist.JIT_CACHE writes it)
_installed: set[tuple[str, str]] = set()  # (zip, cache folder) pairs this process has installed


class StableZipCacheLocator(caching.ZipCacheLocator):
    """numba's ZipCacheLocator with a cache folder that does not depend on where the zip was copied."""

    def __init__(self, py_func: Any, py_file: str) -> None:
        super().__init__(py_func, py_file)
        user_cache = os.path.dirname(self._cache_path)  # numba's user cache dir (the parent locator's choice)
        self._inside = os.path.dirname(self._internal_path).replace("/", "_") or "_"
        self._cache_path = os.path.join(user_cache, "zipped", self._inside)

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> StableZipCacheLocator | None:
        if ".zip" not in py_file:
            return None
        try:
            locator = cls(py_func, py_file)
            locator.ensure_cache_path()
        except (OSError, ValueError):  # no writable cache folder, or no zip in the path: numba's own locators
            return None
        top = locator._internal_path.split("/", 1)[0]
        install_shipped(locator._zip_path, f"{top}/{SHIPPED}/{locator._inside}/", locator._cache_path)
        return locator


def install_shipped(zip_path: str, folder: str, cache_path: str) -> int:
    """Copy the cache files the zip ships in `folder` into `cache_path` (once per process and folder); return
    how many files were written. Never raises: the kernels then compile as without a shipped cache.

    A shipped index `<name>.nbi` and its `<name>.*.nbc` are written when the local index is missing, of another
    numba version or of another source stamp; a local index of the same stamp is kept (it may hold entries
    compiled here for this CPU). Data files go first and the index last, each atomically (temp file and
    os.replace), so another Python worker on the host never reads a half-written file.
    """
    key = (zip_path, cache_path)
    if key in _installed:
        return 0
    _installed.add(key)
    try:
        return _install(zip_path, folder, cache_path)
    except Exception as exc:  # a broken zip or cache folder must not break the import
        log.debug("shipped numba cache of %s not installed in %s: %s", zip_path, cache_path, exc)
        return 0


def _install(zip_path: str, folder: str, cache_path: str) -> int:
    written = 0
    with zipfile.ZipFile(zip_path) as z:
        names = [n for n in z.namelist() if n.startswith(folder) and "/" not in n[len(folder):]]
        for index in (n for n in names if n.endswith(".nbi")):
            shipped = z.read(index)
            version, stamp = index_stamp(shipped)
            if version != numba.__version__:  # compiled by another numba: useless here
                continue
            base = os.path.basename(index)[:-len(".nbi")]
            local = os.path.join(cache_path, base + ".nbi")
            if local_stamp(local) == (version, stamp):
                continue
            data = [n for n in names if os.path.basename(n).startswith(base + ".") and n.endswith(".nbc")]
            for name in data:
                _write_atomic(os.path.join(cache_path, os.path.basename(name)), z.read(name))
            _write_atomic(local, shipped)
            written += len(data) + 1
    return written


def index_stamp(index: bytes) -> tuple[str, Any]:
    """(numba version, source stamp) of a numba cache index's bytes (a pickled version, then (stamp, overloads))."""
    f = io.BytesIO(index)
    version = pickle.load(f)
    if version != numba.__version__:  # another numba's overloads may not unpickle here
        return version, None
    stamp, _overloads = pickle.loads(f.read())
    return version, stamp


def local_stamp(path: str) -> tuple[str, Any] | None:
    """index_stamp of the index file at `path`, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return index_stamp(f.read())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError):
        return None


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def install() -> None:
    """Put the stable zip locator first among numba's cache locators (before any kernel is decorated)."""
    classes = caching.CacheImpl._locator_classes
    if StableZipCacheLocator not in classes:
        classes.insert(0, StableZipCacheLocator)
