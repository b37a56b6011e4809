"""Progress a person can watch: an epoch bar on a terminal, one INFO line per epoch elsewhere, Spark job names.

On a terminal (stderr is a TTY) training shows a tqdm bar with the loss and seconds per epoch; in
Airflow or Databricks logs (no TTY) each epoch is one plain INFO line. Spark jobs carry the stage
and epoch they belong to (job description on classic Spark, a job tag on Spark Connect), so the
Spark UI reads as the pipeline.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

log = logging.getLogger("gramian.progress")  # INFO even when the CLI quiets the rest of gramian


def epoch_line(stats: Any, total: int) -> str:
    """The per-epoch line: loss terms (eq. 26) and the two half-steps' seconds."""
    return (f"epoch {stats.epoch}/{total} loss {stats.loss:.6g} (observed {stats.observed:.6g}, gramian "
            f"{stats.gramian:.6g}, reg {stats.regularization:.6g}) user {stats.user_seconds:.2f}s "
            f"item {stats.item_seconds:.2f}s")


def describe_jobs(spark: Any, text: str | None) -> None:
    """Name the Spark jobs that follow (None clears): setJobDescription on classic, a tag on Connect."""
    try:
        from gramian.spark import is_connect

        if is_connect(spark):
            spark.clearTags()
            if text:
                spark.addTag(re.sub(r"[^A-Za-z0-9_.:/-]+", "_", text))  # tags: no commas, no blanks
        else:
            spark.sparkContext.setJobDescription(text)
    except Exception as e:  # naming jobs is cosmetic: never fail a stage over it
        log.debug("could not set the Spark job description: %s", e)


class EpochProgress:
    """Reports each finished epoch: a tqdm bar on a terminal, an INFO line otherwise; names the next epoch's jobs."""

    def __init__(self, spark: Any, total: int, start: int = 0, label: str = "train",
                 bar: bool | None = None) -> None:
        self.spark, self.total, self.label = spark, total, label
        self.bar = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit="epoch", file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        describe_jobs(spark, f"{label} epoch {start + 1}/{total}")

    def __call__(self, stats: Any) -> None:
        seconds = stats.user_seconds + stats.item_seconds
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {stats.loss:.6g}, {seconds:.2f} s/epoch", refresh=False)
            self.bar.update(1)
        else:
            log.info("%s", epoch_line(stats, self.total))
        if stats.epoch < self.total:
            describe_jobs(self.spark, f"{self.label} epoch {stats.epoch + 1}/{self.total}")

    def close(self) -> None:
        """Close the bar; the stage's remaining jobs (writing factors) carry the label alone."""
        if self.bar is not None:
            self.bar.close()
        describe_jobs(self.spark, self.label)


class Phases:
    """Wall seconds of a stage's consecutive phases, each logged at INFO as it ends: where a job's time goes
    outside the work itself (reads, setup passes, writes, tracking), kept in the stage's summary."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> float:
        """End phase `name` now (the next starts now); its seconds."""
        now = time.perf_counter()
        took = now - self._last
        self._last = now
        self.record(name, took)
        return took

    def restart(self) -> None:
        """Start the next phase now (after `record`ing the parts of one measured by the caller)."""
        self._last = time.perf_counter()

    def record(self, name: str, seconds: float) -> None:
        """Count `seconds` for phase `name` (measured by the caller: parts of a phase split after the fact)."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)
        logging.getLogger("gramian.phases").info("%s: %s %.2f s", self.label, name, seconds)  # --verbose
