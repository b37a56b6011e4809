"""Numba's on-disk cache for kernels imported from a zip (spark-submit --py-files), at a stable place.

Numba keys a zipped module's cache folder by the zip's own path, and Spark copies --py-files into a fresh
folder per application, so every cluster job compiled every kernel again in every Python worker (about 10 s
of its first half-step, half a minute on a busy machine). Here a zipped module's cache lives in numba's user
cache folder under its path inside the zip; numba's index still checks the source's content hash (and its
own version), so a changed kernel is compiled again. Not a zip: numba's own locators, unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from numba.core import caching


class StableZipCacheLocator(caching.ZipCacheLocator):
    """numba's ZipCacheLocator with a cache folder that does not depend on where the zip was copied."""

    def __init__(self, py_func: Any, py_file: str) -> None:
        super().__init__(py_func, py_file)
        user_cache = os.path.dirname(self._cache_path)  # numba's user cache dir (the parent locator's choice)
        inside = os.path.dirname(self._internal_path).replace("/", "_") or "_"
        self._cache_path = os.path.join(user_cache, "zipped", inside)

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> StableZipCacheLocator | None:
        if ".zip" not in py_file:
            return None
        try:
            locator = cls(py_func, py_file)
            locator.ensure_cache_path()
        except (OSError, ValueError):  # no writable cache folder, or no zip in the path: numba's own locators
            return None
        return locator


def install() -> None:
    """Put the stable zip locator first among numba's cache locators (before any kernel is decorated)."""
    classes = caching.CacheImpl._locator_classes
    if StableZipCacheLocator not in classes:
        classes.insert(0, StableZipCacheLocator)
