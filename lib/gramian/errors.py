"""The error hierarchy: every failure a user can cause has a class and a message with a remedy."""

from __future__ import annotations


class GramianError(Exception):
    """Base of every error gramian raises on purpose."""


class ConfigError(GramianError, ValueError):
    """A configuration key is unknown, mistyped or out of range."""


class InputDataError(GramianError, ValueError):
    """Input data (a file, a column, a table) cannot be used as it is."""


class SolverError(GramianError, ArithmeticError):
    """Training diverged or was asked to solve an ill-posed problem."""


class PublishError(GramianError):
    """Publishing top-n lists was refused (e.g. index recall below its floor)."""


class StorageError(GramianError):
    """The store (storage.root or storage.artifacts) cannot be opened: missing connector, unreachable, denied."""
