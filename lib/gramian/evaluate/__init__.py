"""Evaluation: exact full-catalogue and corrected sampled metrics as DataFrame aggregations; report."""

from gramian.evaluate.job import run

__all__ = ["run"]
