"""The training benchmark's paired comparisons (benchmarks/train_bench.py), on hand-made per-user files."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import train_bench as TB


def _run(label: str, method: str, recall: np.ndarray) -> dict:
    return {"dataset": "d", "label": label, "method": method, "split": {"users": len(recall)},
            "metrics": {"recall@20": float(recall.mean())}}


def test_comparisons_pair_tuned_spark_and_large_d_numpy_runs_with_every_peer_but_not_the_defaults(
        tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path)
    rng = np.random.default_rng(0)
    per_user = {label: rng.random(50) for label in ("gramian (defaults)", "gramian numpy 1-proc", "gramian (conf)",
                                                    "gramian numpy 1-proc (d=2048)", "RP3beta", "EASE")}
    methods = {"gramian (defaults)": "gramian", "gramian numpy 1-proc": "gramian_np", "gramian (conf)": "gramian",
               "gramian numpy 1-proc (d=2048)": "gramian_np", "RP3beta": "rp3beta", "EASE": "ease"}
    for label, recall in per_user.items():
        np.save(TB.per_user_path("d", label), recall)
    records = [_run(label, methods[label], recall) for label, recall in per_user.items()]

    out = TB.comparisons(records)

    assert {(c["gramian"], c["peer"]) for c in out} == {
        (g, p) for g in ("gramian (conf)", "gramian numpy 1-proc (d=2048)") for p in ("RP3beta", "EASE")}
    for c in out:
        diff = per_user[c["gramian"]] - per_user[c["peer"]]
        assert c["paired"]["mean"] == pytest.approx(diff.mean(), rel=1e-12)
        assert c["paired"]["low"] < diff.mean() < c["paired"]["high"] and c["paired"]["users"] == 50


def test_a_comparison_without_a_per_user_file_has_no_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path)
    recall = np.linspace(0, 1, 10)
    np.save(TB.per_user_path("d", "RP3beta"), recall)
    out = TB.comparisons([_run("gramian (conf)", "gramian", recall), _run("RP3beta", "rp3beta", recall)])
    assert len(out) == 1 and out[0]["paired"] is None


def test_a_failed_rerun_keeps_the_earlier_completed_record_and_its_per_user_file(tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path)
    earlier = {**_run("gramian (conf)", "gramian", np.ones(4)), "fit_seconds": 800.0}
    np.save(TB.per_user_path("d", "gramian (conf)"), np.ones(4))
    failed = {"dataset": "d", "label": "gramian (conf)", "method": "gramian", "error": "rc=1", "run_date": "today"}
    np.save(TB.pending_path("d", "gramian (conf)"), np.zeros(4))  # what the crashed worker left

    TB.settle_per_user("d", "gramian (conf)", ok=False)
    runs = TB.merge([earlier], [failed])

    assert runs == [{**earlier, "rerun_error": {"error": "rc=1", "run_date": "today"}}]
    assert not TB.pending_path("d", "gramian (conf)").exists()
    assert np.load(TB.per_user_path("d", "gramian (conf)")).tolist() == [1, 1, 1, 1]


def test_a_completed_rerun_replaces_the_record_and_its_per_user_file(tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path)
    earlier = {**_run("RP3beta", "rp3beta", np.ones(4)), "rerun_error": {"error": "rc=1", "run_date": "x"}}
    np.save(TB.per_user_path("d", "RP3beta"), np.ones(4))
    new = _run("RP3beta", "rp3beta", np.zeros(4))
    np.save(TB.pending_path("d", "RP3beta"), np.zeros(4))

    TB.settle_per_user("d", "RP3beta", ok=True)

    assert TB.merge([earlier], [new]) == [new]
    assert np.load(TB.per_user_path("d", "RP3beta")).tolist() == [0, 0, 0, 0]
    assert not TB.pending_path("d", "RP3beta").exists()


def test_a_failed_run_on_another_split_does_not_keep_the_stale_record():
    old = {**_run("EASE", "ease", np.ones(4)), "split": {"users": 4}}
    other_split = {**_run("RP3beta", "rp3beta", np.ones(5)), "split": {"users": 5}}
    failed = {"dataset": "d", "label": "EASE", "method": "ease", "error": "rc=1"}
    assert TB.merge([old], [other_split, failed]) == [other_split, failed]


def test_a_comparison_whose_per_user_file_is_gone_keeps_the_earlier_interval_of_the_same_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path)
    recall = np.linspace(0, 1, 10)
    runs = [_run("gramian (conf)", "gramian", recall), _run("RP3beta", "rp3beta", recall)]
    interval = {"mean": 0.01, "low": 0.0, "high": 0.02, "users": 10}
    earlier = [{**c, "paired": interval} for c in TB.comparisons(runs)]  # no files: paired None, then an interval
    other = [{**c, "peer_recall": 0.9, "paired": interval} for c in TB.comparisons(runs)]

    assert TB.kept_comparisons(TB.comparisons(runs), earlier)[0]["paired"] == interval
    assert TB.kept_comparisons(TB.comparisons(runs), other)[0]["paired"] is None  # another peer run: not kept
