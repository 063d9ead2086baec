"""CPU and memory of a process and its descendants, from /proc (Linux).

A worker counts with its children: SoundFoundry's mastering processes, Celery's prefork
pool. Figures of processes that end meanwhile are skipped, not failed on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        with contextlib.suppress(OSError):  # a process may end meanwhile
            for task in Path(f"/proc/{pid}/task").iterdir():
                frontier += map(int, (task / "children").read_text().split())
    return found


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, ...), in bytes."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            figures[name] = int(parts[0]) * 1024
    return figures


def tree_status(root: int, figure: str) -> int:
    """One /proc/<pid>/status figure (VmRSS, VmHWM, ...) summed over the tree, in bytes."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += proc_status(pid).get(figure, 0)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are 14th and 15th,
    # cutime and cstime (children it has reaped) 16th and 17th.
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time of the process, its live descendants and the children it has reaped."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total
