"""Pure-numpy/numba math kernels of iALS (Rendle, 'Item Recommendation from Implicit Feedback', §5.1).

No Spark here: the driver and executors call these on plain arrays (CSR blocks plus dense embeddings).
"""

from gramian.kernels import _jit_cache

_jit_cache.install()  # before the kernel modules below decorate their functions

from gramian.kernels.confidence import observed_weights  # noqa: E402
from gramian.kernels.loss import (  # noqa: E402
    LossTerms,
    gramian,
    gramian_term,
    ials_loss,
    observed_loss,
    regularization_base,
    regularization_term,
    regularization_weights,
)
from gramian.kernels.solvers import SOLVERS, check_finite, solve_side  # noqa: E402

__all__ = [
    "SOLVERS",
    "LossTerms",
    "check_finite",
    "gramian",
    "gramian_term",
    "ials_loss",
    "observed_loss",
    "observed_weights",
    "regularization_base",
    "regularization_term",
    "regularization_weights",
    "solve_side",
]
