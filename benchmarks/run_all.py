"""Every benchmark in one command (`make bench`): the training benchmark, optionally re-tuning first.

    python -m benchmarks.run_all                    # train benchmark on all datasets (~20-30 min on 2 cores)
    python -m benchmarks.run_all --skip-synthetic   # without the 10M synthetic set
    python -m benchmarks.run_all --quick            # small and Gowalla only, no BPR, no 1-process reference
    python -m benchmarks.run_all --tune             # re-run the validation grids first (adds ~1 h)
    python -m benchmarks.run_all --retrieval-only   # only the retrieval benchmark (ScaNN vs exact, publish vs MLlib)
    python -m benchmarks.run_all --evaluate-only    # only the evaluation benchmark (Gowalla exact metrics vs MLlib)

Tuning results (benchmarks/results/tuning.json) are kept between runs: the training benchmark takes
each peer's validation optimum from there, so a plain run is reproducible without re-tuning.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import evaluate_bench, retrieval_bench, train_bench, tune


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tune", action="store_true", help="re-run benchmarks.tune before the benchmark")
    ap.add_argument("--retrieval-only", action="store_true", help="run only benchmarks.retrieval_bench")
    ap.add_argument("--evaluate-only", action="store_true", help="run only benchmarks.evaluate_bench")
    args = ap.parse_args(argv)
    if args.evaluate_only:
        return evaluate_bench.main([])
    if args.retrieval_only:
        return retrieval_bench.main(["--quick"] if args.quick else [])
    if args.tune:
        tune.main([])
    bench_args = ["--fresh"]
    if args.skip_synthetic:
        bench_args.append("--skip-synthetic")
    if args.quick:
        bench_args.append("--quick")
    status = train_bench.main(bench_args)
    status = status or retrieval_bench.main(["--quick"] if args.quick else [])
    return status or evaluate_bench.main([])


if __name__ == "__main__":
    sys.exit(main())
