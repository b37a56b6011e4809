"""Recall@20 by history length (benchmarks/history_slices.py): users line up with the per-user metric arrays, and
only a per-user file that reproduces the recorded run is used."""

from __future__ import annotations

import numpy as np

from benchmarks import datasets as D
from benchmarks import history_slices as H
from benchmarks import train_bench as TB
from benchmarks.evaluation import evaluate_by_user


def _split() -> D.Split:
    """5 users (user 2 has no test item), 6 items; user u has u + 1 train pairs."""
    users = np.repeat(np.arange(5), np.arange(1, 6)).astype(np.int32)
    items = np.concatenate([np.arange(u + 1) for u in range(5)]).astype(np.int32)
    test = {0: [5], 1: [4], 3: [5], 4: [5]}
    indptr = np.zeros(6, np.int64)
    for u in range(5):
        indptr[u + 1] = indptr[u] + len(test.get(u, []))
    indices = np.array([i for u in range(5) for i in test.get(u, [])], np.int32)
    return D.Split("t", 5, 6, users, items, np.ones(len(users)), indptr, indices)


def test_history_lengths_follow_the_per_user_metric_arrays_users():
    split = _split()
    rng = np.random.default_rng(0)
    _, per_user = evaluate_by_user(split, rng.random((5, 3)), rng.random((6, 3)), ks=(20,))
    hist = H.history_lengths(split)
    assert hist.tolist() == [1, 2, 4, 5] and len(per_user["recall@20"]) == len(hist)


def test_a_per_user_file_is_used_only_while_it_reproduces_the_recorded_recall(tmp_path, monkeypatch):
    monkeypatch.setattr(TB, "PER_USER", tmp_path / "per_user")
    monkeypatch.setattr(H, "OWN", tmp_path / "own")
    TB.PER_USER.mkdir()
    x = np.array([0.0, 0.5, 1.0, 0.5])
    np.save(TB.per_user_path("d", "EASE"), x)
    spec = {"label": "EASE", "method": "ease", "params": {}}
    got, source = H.per_user("d", spec, {"metrics": {"recall@20": 0.5}}, refit=False, n_users=4, timeout=1)
    assert got is not None and got.tolist() == x.tolist() and "train.json" in source
    got, source = H.per_user("d", spec, {"metrics": {"recall@20": 0.4}}, refit=False, n_users=4, timeout=1)
    assert got is None and "no per-user file" in source  # a later run's file: not the recorded run's users
