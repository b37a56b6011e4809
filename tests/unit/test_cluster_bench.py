"""The cluster benchmark's report (benchmarks/cluster_bench.py): the no-shared-disk run beside a disk run."""

from __future__ import annotations

import pytest

from benchmarks import cluster_bench as B


def _job(wall: float, fit: float, load: tuple[float, float]) -> dict:
    return {"wall_seconds": wall, "result": {"fit_seconds": fit}, "seconds_per_epoch": fit / 15,
            "driver_peak_rss_mib": 900.0, "worker_peak_rss_mib": [1500.0, 1600.0], "total_peak_rss_mib": 4000.0,
            "metrics": {"recall@20": 0.15, "ndcg@20": 0.13}, "load_1min_start_end": list(load)}


def _doc(storage: str) -> dict:
    jobs = {"gramian-auto": _job(100.0, 20.0, (11.0, 12.5)), "mllib": _job(200.0, 80.0, (12.5, 14.0))}
    return {"machine": {"date": "2026-12-05 19:40 UTC", "nproc": 2, "ram_gib": 23.5, "cpu": "AMD EPYC",
                        "load_before": [11.0, 10.0, 9.0]},
            "load_after": [14.0, 12.0, 10.0], "dataset": "gowalla", "dim": 64, "epochs": 15,
            "cluster": {"workers": 2, "cores_per_worker": 1, "worker_memory": "3g", "executor_memory": "2g",
                        "driver_memory": "1g", "store": "s3a://gramian/warehouse", "storage": storage},
            "jobs": jobs, "ratios": {"gramian-auto": {"fit_vs_mllib": 0.25, "job_vs_mllib": 0.5,
                                                      "s_per_epoch_vs_mllib": 0.25}},
            "prepare_seconds": {"ingest": 30.5, "split": 12.25}, "moto_peak_rss_mib": 321.0}


def test_s3_report_sets_each_jobs_ratios_beside_the_disk_runs_with_both_loads(tmp_path):
    doc = _doc("s3")
    doc["disk"] = {"path": "benchmarks/results/cluster.json", "commit_tested": "main abc123", "date": "then",
                   "load_before": [1.5, 2.5, 2.9], "load_after": [2.1, 3.7, 3.6],
                   "ratios": {"gramian-auto": {"fit_vs_mllib": 0.18, "job_vs_mllib": 0.65,
                                               "s_per_epoch_vs_mllib": 0.13}}}
    B.write_md(doc, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "No shared disk" in text and "ingest 30.5 s, split 12.2 s" in text and "321 MiB" in text
    assert "gramian-auto 11.0 -> 12.5; mllib 12.5 -> 14.0" in text
    assert "load (1.5, 2.5, 2.9) -> (2.1, 3.7, 3.6); this run: load (11.0, 10.0, 9.0) -> (14.0, 12.0, 10.0)" in text
    assert "| gramian-auto | 0.25x | 0.13x | 0.25x | 0.18x | 0.50x | 0.65x |" in text


def test_disk_report_has_no_storage_lines(tmp_path):
    B.write_md(_doc("disk"), tmp_path / "r.md")
    assert "No shared disk" not in (tmp_path / "r.md").read_text()


def test_s3_storage_refuses_a_local_root():
    with pytest.raises(SystemExit):
        B.main(["--storage", "s3", "--root", "/tmp/somewhere"])
