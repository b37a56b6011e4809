"""Partial refresh (publish.users, publish.item_filter; issue 18) driven through the stages.

Day 0: a generated CSV -> ingest -> split -> train A -> publish A (nothing published yet: everyone scored).
Day 1: a few users gain interactions, a new user arrives, every interaction with item X is gone (X left the
catalogue) and item Y is flagged unavailable -> ingest -> split -> train B (warm start) -> publish B with
users=changed. Only users whose training rows changed, the new user and users whose list held X or Y are
rescored; everyone else keeps exactly A's list; the publication is complete; a re-run does not duplicate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import load_config
from gramian.data.ingest import run as ingest
from gramian.data.split import run as split
from gramian.data.synthetic import generate
from gramian.errors import ConfigError
from gramian.retrieval.publish import read_topn, refreshed_users
from gramian.retrieval.publish import run as publish
from gramian.runs import read_input, recorded_inputs
from gramian.train.job import run as train

N = 10
GAINERS = ["u3", "u17", "u42"]
DAY = 86_400
SMALL = ["model.dim=8", "model.epochs=3", "train.checkpoint_every=0", f"publish.n={N}",
         "publish.brute_force_below=100000", "tracking.enabled=false", "split.min_interactions=2"]


def cfg_of(root: Path, csv: Path, *extra: str):
    source = ["data.format=csv", f"data.path={csv}", "data.columns.weight=weight", "data.columns.ts=ts"]
    return load_config("conf/synthetic.yaml", [*SMALL, *source, f"storage.root={root}", *extra])


def lists(frame) -> dict[str, list[tuple]]:
    """user_id -> [(rank, item_id, score, scored_by)] sorted by rank."""
    out: dict[str, list[tuple]] = {}
    for r in frame.select("user_id", "rank", "item_id", "score", "scored_by").collect():
        out.setdefault(r["user_id"], []).append((r["rank"], r["item_id"], r["score"], r["scored_by"]))
    return {u: sorted(v) for u, v in out.items()}


def train_sets(spark, cfg, run_id: str) -> dict[int, set]:
    """user_idx -> {(item_idx, weight)} of the train version run_id was trained on."""
    df = read_input(spark, cfg.storage, "train", recorded_inputs(spark, cfg.storage, run_id), run_id).toPandas()
    return {int(u): set(zip(g["item_idx"], g["weight"], strict=True)) for u, g in df.groupby("user_idx")}


def old_tables(spark, cfg) -> None:
    """Rewrite topn and publications as an earlier gramian wrote them (no scored_by, no refresh columns)."""
    st = cfg.storage
    tables.write(tables.read(spark, st, "topn").drop("scored_by"), st, "topn")
    pubs = tables.read(spark, st, "publications").drop("users_mode", "refreshed", "base_run_id",
                                                       "unavailable_items")
    tables.write(pubs.withColumn("topn_version", F.lit(tables.version(spark, st, "topn"))), st, "publications")


@pytest.fixture(scope="module")
def days(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("refresh")
    root, csv = base / "wh", base / "events.csv"
    g = generate(300, 150, 6000, rank=4, seed=3)
    day0 = pd.DataFrame({"user_id": [f"u{u}" for u in g["user"]], "item_id": [f"i{i}" for i in g["item"]],
                         "weight": g["weight"], "ts": g["ts"]})
    day0.to_csv(csv, index=False)
    cfg = cfg_of(root, csv, "publish.users=changed")
    ingest(spark, cfg, "d0")
    split(spark, cfg, "s0")
    train(spark, cfg, "A")
    first = publish(spark, cfg, "A")
    a_lists = lists(read_topn(spark, cfg.storage))
    counts = pd.Series([i for v in a_lists.values() for _, i, _, _ in v]).value_counts()
    x, y = counts.index[0], counts.index[1]  # the two items most often recommended by A
    old_tables(spark, cfg)

    newest = int(day0["ts"].max())
    seen = day0.groupby("user_id")["item_id"].agg(set)
    extra = [(u, i, 1.0, newest + DAY) for u in GAINERS
             for i in [f"i{j}" for j in range(150) if f"i{j}" not in seen[u] and f"i{j}" not in (x, y)][:3]]
    extra += [("newcomer", i, 2.0, newest + DAY) for i in ("i1", "i2", "i5")]
    day1 = pd.concat([day0[day0["item_id"] != x], pd.DataFrame(extra, columns=day0.columns)])
    day1.to_csv(csv, index=False)
    tables.write(spark.createDataFrame([(y, False), ("i0", True)], "item_id string, available boolean"),
                 cfg.storage, "unavailable")
    cfg1 = cfg_of(root, csv, "publish.users=changed", "publish.item_filter=unavailable",
                  "train.warm_start=published", "model.epochs=1")
    ingest(spark, cfg1, "d1")
    split(spark, cfg1, "s1")
    train(spark, cfg1, "B")
    second = publish(spark, cfg1, "B")
    return {"cfg": cfg1, "first": first, "second": second, "a": a_lists, "x": x, "y": y,
            "b": lists(read_topn(spark, cfg1.storage))}


def expected_refresh(spark, d) -> set[str]:
    """Users whose training rows changed between A's and B's train, new users, users whose A list held X or Y."""
    cfg = d["cfg"]
    old, new = train_sets(spark, cfg, "A"), train_sets(spark, cfg, "B")
    ids = {int(r["idx"]): r["id"] for r in tables.read(spark, cfg.storage, "users").collect()}
    changed = {ids[u] for u, rows in new.items() if old.get(u) != rows}
    dirty = {u for u, v in d["a"].items() if any(i in (d["x"], d["y"]) for _, i, _, _ in v)}
    return changed | dirty | {ids[u] for u in new if ids[u] not in d["a"]}


def test_only_changed_users_are_rescored_and_everyone_else_keeps_their_list(spark, days):
    first, second, a, b = days["first"], days["second"], days["a"], days["b"]
    assert first["refreshed"] == first["users"] and first["base_run_id"] is None  # nothing published before A
    expected = expected_refresh(spark, days)
    assert set(GAINERS) | {"newcomer"} <= expected
    refreshed = {r["user_id"] for r in refreshed_users(spark, days["cfg"].storage, "B").collect()}
    assert refreshed == expected
    assert second["refreshed"] == len(expected) < second["users"]
    assert second["base_run_id"] == "A" and second["users_mode"] == "changed"
    kept = set(b) - refreshed
    assert kept and all(b[u] == [(r, i, s, "A") for r, i, s, _ in a[u]] for u in kept)  # exactly A's rows
    assert all(v[0][3] == "B" for u, v in b.items() if u in refreshed)


def test_the_new_publication_is_complete_and_holds_no_unavailable_item(spark, days):
    cfg, b = days["cfg"], days["b"]
    st = cfg.storage
    train_users = read_input(spark, st, "train", recorded_inputs(spark, st, "B"), "B").select("user_idx").distinct()
    assert len(b) == train_users.count() == days["second"]["users"]
    assert all([r for r, _, _, _ in v] == list(range(1, N + 1)) for v in b.values())
    assert days["second"]["rows"] == len(b) * N
    held = {i for v in b.values() for _, i, _, _ in v}
    assert days["x"] not in held and days["y"] not in held
    assert days["second"]["unavailable_items"] == 2  # x left the catalogue, y is flagged; i0 stays available
    pub = tables.read(spark, st, "publications").filter("current").collect()[0]
    assert (pub["run_id"], pub["refreshed"], pub["base_run_id"]) == ("B", days["second"]["refreshed"], "A")
    old = tables.read(spark, st, "publications").filter("run_id = 'A'").collect()[0]
    assert old["users_mode"] is None and old["refreshed"] is None  # the earlier table's row reads null


def test_fold_in_recommendations_skip_the_publications_unavailable_items(spark, days):
    """recommend() on the published run's index never returns an item its publication excluded (y is flagged
    by publish.item_filter and is one of A's two most recommended items, so only the exclusion keeps it out)."""
    from gramian.retrieval.recommend import recommend

    cfg = days["cfg"]
    items = [r["id"] for r in tables.read(spark, cfg.storage, "item_factors").filter("run_id = 'B'").collect()]
    assert days["y"] in items, "y must be in B's catalogue for this test to mean anything"
    history = [i for i in items if i not in (days["x"], days["y"])][:3]
    n = len(items) - len(history) - 2  # every candidate but two: without the exclusion y would be listed
    rec = recommend(history, n=n, cfg=cfg, run_id="B", spark=spark)
    assert len(rec.items) == n and not set(rec.items) & {days["x"], days["y"], *history}


def test_a_rerun_gives_the_same_lists_without_duplicates(spark, days):
    cfg = days["cfg"]
    again = publish(spark, cfg, "B")
    assert (again["rows"], again["refreshed"], again["base_run_id"]) == (
        days["second"]["rows"], days["second"]["refreshed"], "A")
    top = read_topn(spark, cfg.storage)
    assert top.count() == days["second"]["rows"]
    assert top.groupBy("user_id", "rank").count().filter("count > 1").count() == 0
    assert lists(top) == days["b"]
    assert tables.read(spark, cfg.storage, "publications").count() == 2


def test_active_since_rescores_recently_active_users(spark, days):
    cfg = load_config("conf/synthetic.yaml", cfg_args(days))
    summary = publish(spark, cfg, "B")
    b = lists(read_topn(spark, cfg.storage))
    refreshed = {u for u, v in b.items() if v[0][3] == "B"}
    dirty = {u for u, v in days["a"].items() if any(i in (days["x"], days["y"]) for _, i, _, _ in v)}
    assert refreshed == set(GAINERS) | {"newcomer"} | dirty  # day 1's users, and lists that held x or y
    assert summary["refreshed"] == len(refreshed) and summary["users_mode"] == "active_since:0.5"
    assert all(b[u] == [(r, i, s, "A") for r, i, s, _ in days["a"][u]] for u in set(b) - refreshed)


def cfg_args(days) -> list[str]:
    cfg = days["cfg"]
    return [*SMALL, "data.format=csv", f"data.path={cfg.data.path}", "data.columns.weight=weight",
            "data.columns.ts=ts", f"storage.root={cfg.storage.root}", "publish.users=active_since:0.5",
            "publish.item_filter=unavailable"]


@pytest.mark.parametrize("setting", ["publish.users=some", "publish.users=active_since:0",
                                     "publish.users=active_since:week", "publish.item_filter=bad-name"])
def test_bad_refresh_settings_are_refused_naming_the_value(setting):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=rf"{key}.*must be.*got '{value}'") as info:
        load_config("conf/synthetic.yaml", [setting])
    if key == "publish.users":
        assert "'all', 'changed' or 'active_since:<days>'" in str(info.value)


def test_good_refresh_settings_are_accepted():
    assert load_config("conf/synthetic.yaml", ["publish.users=active_since:1.5"]).publish.users == "active_since:1.5"
    assert load_config("conf/synthetic.yaml", []).publish.users == "all"
    assert load_config("conf/synthetic.yaml", ["publish.item_filter=unavailable"]).publish.item_filter == "unavailable"
