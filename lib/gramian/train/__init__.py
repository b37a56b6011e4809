"""The trainer: block-distributed alternating least squares on Spark (paper §5.1)."""

from gramian.train.model import IALS, IALSModel

__all__ = ["IALS", "IALSModel"]
