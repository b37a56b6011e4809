"""The initial factors (paper §4: N(0, σ/√d) rows), identical whichever process or block layout draws them."""

from __future__ import annotations

import math

import numpy as np

INIT_CHUNK = 4096


def init_factors(n: int, dim: int, scale: float, seed: int, side: int, start: int = 0,
                 stop: int | None = None) -> np.ndarray:
    """Rows start:stop of the N(0, σ/√d) initial factors; the same rows whatever the block layout."""
    stop = n if stop is None else stop
    sd = scale / math.sqrt(dim)
    out = np.empty((stop - start, dim), np.float32)
    for chunk in range(start // INIT_CHUNK, -(-stop // INIT_CHUNK)):
        lo, hi = chunk * INIT_CHUNK, min(n, (chunk + 1) * INIT_CHUNK)
        rows = np.random.default_rng([seed, side, chunk]).normal(0.0, sd, size=(hi - lo, dim))
        a, b = max(lo, start), min(hi, stop)
        out[a - start:b - start] = rows[a - lo:b - lo]
    return out
