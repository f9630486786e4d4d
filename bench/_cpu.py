"""CPU time per process group, read from ``/proc`` (Linux), for the benchmarks.

A snapshot maps a group name to the CPU seconds (user + system) its processes have used so far:

- ``server``: the `flowrelay server` process and its descendants;
- ``worker``: the `flowrelay worker` process itself;
- ``children``: the worker's descendants (its warm child processes);
- ``rabbitmq``: every ``beam.smp`` process on the machine (the broker; other users of RabbitMQ
  during a measurement count too, so measure on a quiet broker);
- ``client``: the process taking the snapshot (the benchmark's caller).

The difference of two snapshots divided by the runs in between gives CPU milliseconds per run,
a figure far less noisy than wall-clock time on a shared machine.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("server", "worker", "children", "rabbitmq", "client")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """`(comm, ppid, cpu seconds)` of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _processes() -> dict[int, tuple[str, int, float]]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None:
                found[int(entry.name)] = info
    return found


def _descendants(procs: dict[int, tuple[str, int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    result: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in result:
            result.add(pid)
            todo.extend(children.get(pid, ()))
    return result


def snapshot(server_pid: int, worker_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each group (see the module docstring)."""
    procs = _processes()

    def cpu(pids: set[int]) -> float:
        return sum(procs[p][2] for p in pids if p in procs)

    times = os.times()
    return {
        "server": cpu({server_pid} | _descendants(procs, server_pid)),
        "worker": cpu({worker_pid}),
        "children": cpu(_descendants(procs, worker_pid)),
        "rabbitmq": cpu({pid for pid, (comm, _, _) in procs.items() if comm == "beam.smp"}),
        "client": times.user + times.system,
    }


def per_run_ms(before: dict[str, float], after: dict[str, float], runs: int) -> dict[str, float]:
    """CPU milliseconds per run of each group between two snapshots, and their ``total``."""
    result = {g: round((after[g] - before[g]) * 1000 / max(runs, 1), 2) for g in GROUPS}
    result["total"] = round(sum(result[g] for g in GROUPS), 2)
    return result
