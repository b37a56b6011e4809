"""The trainer: block-distributed alternating least squares on Spark (paper §5.1; RankALS §5.2)."""

from gramian.train.model import IALS, IALSModel
from gramian.train.pairwise import RankALS

__all__ = ["IALS", "IALSModel", "RankALS"]
