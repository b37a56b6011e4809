"""The data layer: readers, validation and quarantine, id maps, splits and the synthetic generator.

Stages (each `run(spark, cfg, run_id) -> dict`): `gramian.data.ingest.run`, `gramian.data.split.run`,
`gramian.data.synthetic.run`. Table schemas and quarantine reasons live in `gramian.data.schemas`.
"""

from gramian.data.schemas import Reason

__all__ = ["Reason"]
