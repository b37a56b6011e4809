"""Warm start (train.warm_start, issue 18) driven through the stages on one synthetic warehouse.

ingest -> split -> train A (4 epochs) -> evaluate -> publish A; then B warm-starts from the publication for
one epoch. iALS state between epochs is its factors alone, so B's epoch must be A's fifth epoch: the same
loss as a cold run of 5 epochs. Other models and dimensions are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import load_config
from gramian.data.ingest import run as ingest
from gramian.data.split import run as split
from gramian.errors import ConfigError
from gramian.evaluate.job import run as evaluate
from gramian.factors import factor_rows
from gramian.retrieval.publish import run as publish
from gramian.train.job import run as train

SMALL = ["generate.n_users=300", "generate.n_items=150", "generate.n_interactions=6000", "model.dim=8",
         "model.epochs=4", "train.checkpoint_every=0", "evaluate.k=[10,20]", "evaluate.sampled.enabled=false",
         "publish.n=10", "publish.brute_force_below=100000", "tracking.enabled=false"]


def cfg_of(root: Path, *extra: str):
    return load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={root}", *extra])


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """A warehouse with run A trained for 4 epochs, evaluated and published."""
    root = tmp_path_factory.mktemp("warm") / "wh"
    cfg = cfg_of(root)
    ingest(spark, cfg, "ing")
    split(spark, cfg, "s0")
    summary = train(spark, cfg, "A")
    evaluate(spark, cfg, "A")
    publish(spark, cfg, "A")
    return root, summary


def runs_row(spark, cfg, run_id: str):
    return tables.read(spark, cfg.storage, "runs").filter(F.col("run_id") == run_id).collect()[0]


def test_one_warm_epoch_after_four_is_the_fifth_epoch_of_a_cold_run(spark, published):
    root, a = published
    warm = train(spark, cfg_of(root, "train.warm_start=published", "model.epochs=1"), "B")
    cold = train(spark, cfg_of(root, "model.epochs=5"), "C5")
    assert warm["warm_start"]["run_id"] == "A"
    assert warm["warm_start"]["items_from_source"] == a["items"] and warm["warm_start"]["items_new"] == 0
    assert warm["warm_start"]["users_from_source"] == a["users"]
    assert warm["final_loss"] == pytest.approx(cold["final_loss"], rel=1e-4)
    assert warm["final_loss"] <= a["final_loss"] * (1 + 1e-6)  # an ALS epoch never raises the loss
    cold1 = train(spark, cfg_of(root, "model.epochs=1"), "C1")
    assert warm["final_loss"] < 0.9 * cold1["final_loss"]
    cfg = cfg_of(root)
    assert runs_row(spark, cfg, "B")["warm_start"] == "A"
    assert runs_row(spark, cfg, "C1")["warm_start"] is None
    assert json.loads(runs_row(spark, cfg, "B")["config"])["train"]["warm_start"] == "published"
    idx_b, h_b = factor_rows(spark, cfg.storage, "item_factors", "B")
    idx_5, h_5 = factor_rows(spark, cfg.storage, "item_factors", "C5")
    assert sorted(idx_b) == sorted(idx_5)
    order_b, order_5 = idx_b.argsort(), idx_5.argsort()
    assert abs(h_b[order_b] - h_5[order_5]).max() < 1e-3 * abs(h_5).max()


def test_a_named_run_of_another_dimension_or_model_is_refused(spark, published):
    root, _ = published
    with pytest.raises(ConfigError, match=r"model\.dim \(16\).*'A'.*model\.dim=8"):
        train(spark, cfg_of(root, "train.warm_start=A", "model.dim=16", "model.epochs=1"), "D")
    with pytest.raises(ConfigError, match=r"model\.name \('pairwise'\).*model\.name='ials'"):
        train(spark, cfg_of(root, "train.warm_start=A", "model.name=pairwise", "model.epochs=1"), "D")
    with pytest.raises(ConfigError, match=r"finished run.*'nope'.*no such run"):
        train(spark, cfg_of(root, "train.warm_start=nope", "model.epochs=1"), "D")
    with pytest.raises(ConfigError, match=r"another run.*'A'.*--resume"):
        train(spark, cfg_of(root, "train.warm_start=A", "model.epochs=1"), "A")
    with pytest.raises(ConfigError, match=r"train\.warm_start"):
        train(spark, cfg_of(root, "train.warm_start=bad id!", "model.epochs=1"), "D")


def test_published_with_nothing_published_starts_cold(spark, tmp_path):
    cfg = cfg_of(tmp_path / "wh", "train.warm_start=published", "model.epochs=1")
    ingest(spark, cfg, "ing")
    split(spark, cfg, "s0")
    out = train(spark, cfg, "first")
    assert out["warm_start"] is None and runs_row(spark, cfg, "first")["warm_start"] is None


def test_a_run_whose_factor_table_write_failed_is_recorded_failed_and_not_warm_started_from(spark, published,
                                                                                           monkeypatch):
    """The factor tables are written before the runs row: a failed factor write leaves only a `failed` row."""
    root, _ = published
    written = tables.write

    def failing(df, storage, name, *args, **kwargs):
        if name == "item_factors":
            raise RuntimeError("injected item_factors failure")
        return written(df, storage, name, *args, **kwargs)

    monkeypatch.setattr(tables, "write", failing)
    with pytest.raises(RuntimeError, match="injected item_factors failure"):
        train(spark, cfg_of(root, "model.epochs=1"), "E")
    monkeypatch.setattr(tables, "write", written)
    cfg = cfg_of(root)
    assert runs_row(spark, cfg, "E")["status"] == "failed"
    assert tables.read(spark, cfg.storage, "runs").filter(F.col("run_id") == "E").count() == 1
    assert tables.read(spark, cfg.storage, "item_factors").filter(F.col("run_id") == "E").count() == 0
    with pytest.raises(ConfigError, match=r"finished run.*'E'.*status failed"):
        train(spark, cfg_of(root, "train.warm_start=E", "model.epochs=1"), "D")


def dictionary_columns(spark, st, name: str, run_id: str) -> set[str]:
    """The columns of `run_id`'s data files in table `name` that carry a Parquet dictionary page."""
    import pyarrow.parquet as pq

    found = set()
    for path in tables.read(spark, st, name).filter(F.col("run_id") == run_id).inputFiles():
        meta = pq.ParquetFile(path.removeprefix("file:")).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                if meta.row_group(g).column(c).has_dictionary_page:
                    found.add(meta.row_group(g).column(c).path_in_schema)
    return found


def test_the_train_stage_writes_factor_tables_without_dictionaries_for_their_distinct_columns(spark, published):
    """idx, id and the factor values are distinct in every row: the factor tables are created with Parquet's
    dictionary off for them (tables.PROPERTIES), which every later write of the table follows."""
    cfg = cfg_of(published[0])
    for name in ("user_factors", "item_factors"):
        props = {r[0]: r[1] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{tables.table_ref(cfg.storage, name)}`")
                 .collect()}
        assert {k: props.get(k) for k in tables.NO_DICTIONARY} == tables.NO_DICTIONARY
        assert dictionary_columns(spark, cfg.storage, name, "A") == {"run_id"}  # on for the rest, as by default
