"""Peak resident memory of a process tree (driver + Spark JVM + Python workers), sampled from /proc.

No psutil: every `interval` seconds a background thread lists /proc, builds the parent→children map
from /proc/<pid>/stat and sums VmRSS of the root and all its descendants. Shared pages are counted
once per process (RSS, not PSS), so the sum is an upper bound of what the tree really holds.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[1])


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def tree_rss_by_command(root: int | None = None) -> dict[str, int]:
    """VmRSS bytes of the tree under `root`, summed per command name (java, python, ...)."""
    out: dict[str, int] = {}
    for p in tree_pids(os.getpid() if root is None else root):
        rss = _rss_kib(p) * 1024
        if rss:
            name = _comm(p)
            out[name] = out.get(name, 0) + rss
    return out


def tree_rss_bytes(root: int | None = None) -> int:
    """Summed VmRSS of the process tree under `root` (default: this process)."""
    return sum(tree_rss_by_command(root).values())


class PeakRSS:
    """Context manager sampling the tree's RSS every `interval` s; `.peak` and `.start` in bytes.

    `.peak_by_command` splits the peak sample by command name (java = Spark JVM, python = driver and
    Python workers).
    """

    def __init__(self, root: int | None = None, interval: float = 0.2) -> None:
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.samples = 0
        self.peak_by_command: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        by = tree_rss_by_command(self.root)
        total = sum(by.values())
        if total >= self.peak:
            self.peak, self.peak_by_command = total, by
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = tree_rss_bytes(self.root)
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


if __name__ == "__main__":  # quick self-check: python -m benchmarks.memory
    with PeakRSS() as m:
        blob = bytearray(200 * 2**20)
        time.sleep(0.5)
        del blob
    print(f"start {m.start / 2**20:.0f} MiB, peak {m.peak / 2**20:.0f} MiB, {m.samples} samples")
