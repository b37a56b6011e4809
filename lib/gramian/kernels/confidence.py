"""Observed-pair weights and targets in Rendle's eq. 21 form (Hu et al. 2008; Rendle et al. 2022)."""

from __future__ import annotations

import numpy as np

FORMS = ("rendle", "hu")
SCALES = ("constant", "linear", "log")


def _check_weights(weight: np.ndarray) -> np.ndarray:
    """Return `weight` as float64, raising on the first non-finite or negative entry."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weight must be 1-D, got shape {w.shape}: pass one weight per observed pair")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"weight must be finite and >= 0, got weight[{k}]={float(w[k])!r}: "
            "clean or clip the interaction weights before training"
        )
    return w


def confidence_shape(w: np.ndarray, scale: str, eps: float) -> np.ndarray:
    """Return w' of Hu et al. 2008 §4: 1 (constant), w (linear) or log(1 + w/eps) (log)."""
    if scale == "constant":
        return np.ones_like(w)
    if scale == "linear":
        return w.copy()
    if scale == "log":
        return np.log1p(w / eps)
    raise ValueError(f"scale must be one of {SCALES}, got scale={scale!r}: pick one of those names")


def observed_weights(
    weight: np.ndarray,
    alpha0: float,
    form: str = "rendle",
    scale: str = "constant",
    beta: float = 1.0,
    eps: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Map raw interaction weights to (alpha_tilde, target) of the eq. 21 loss, S-tilde of §5.1."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got form={form!r}: pick one of those names")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got scale={scale!r}: pick one of those names")
    if not np.isfinite(alpha0) or alpha0 < 0:
        raise ValueError(f"alpha0 must be finite and >= 0, got alpha0={float(alpha0)!r}: use e.g. alpha0=0.1")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got beta={float(beta)!r}: use beta > 0")
    if scale == "log" and (not np.isfinite(eps) or eps <= 0):
        raise ValueError(f"eps must be finite and > 0 for scale='log', got eps={float(eps)!r}: use eps=1.0")
    w = _check_weights(weight)
    shape = confidence_shape(w, scale, eps)
    if form == "rendle":
        # Sum_S g (y_hat - 1)^2 + alpha0 Sum_all y_hat^2: g is already the weight above alpha0.
        alpha_tilde = np.ones_like(w) if scale == "constant" else 1.0 + beta * shape
        target = np.ones_like(w)
    else:
        # Hu et al.: alpha = alpha0 + beta w', label 1 -> eq. 21's (alpha - alpha0, alpha / (alpha - alpha0)).
        alpha_tilde = beta * shape
        with np.errstate(divide="ignore", invalid="ignore"):
            target = (alpha0 + alpha_tilde) / alpha_tilde
    nonpos = ~(alpha_tilde > 0)
    if nonpos.any():
        k = int(np.argmax(nonpos))
        raise ValueError(
            f"alpha_tilde must be > 0 for every observed pair, "
            f"got alpha_tilde[{k}]={float(alpha_tilde[k])!r} "
            f"from weight[{k}]={float(w[k])!r} with form={form!r}, scale={scale!r}, beta={float(beta)!r}: "
            "use beta > 0 (and, for form='hu' with scale 'linear'/'log', strictly positive weights)"
        )
    return alpha_tilde, target
