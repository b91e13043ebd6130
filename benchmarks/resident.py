"""Resident memory of a process now (Linux /proc/PID/statm), for the benchmarks that sample it."""

from __future__ import annotations

import os


def resident_bytes(pid: int | str = "self") -> int:
    """Bytes of the process's resident set at this moment (this process by default)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
