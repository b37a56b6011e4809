"""gramian: item recommenders from implicit feedback on Apache Spark (Rendle, §3, §5, §6)."""

from gramian.errors import ConfigError, GramianError, InputDataError, PublishError, SolverError

__version__ = "0.1.0"

__all__ = ["ConfigError", "GramianError", "InputDataError", "PublishError", "SolverError", "__version__"]
