"""Time from process start to the first training step, without importing anything heavy (the
hand-written loop uses it too, so it must not pay for Lightning's import)."""

from __future__ import annotations

import os
from pathlib import Path


def since_process_start() -> float:
    """Seconds since this process started (Linux ``/proc``; 10 ms resolution)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot
    return float(Path("/proc/uptime").read_text().split()[0]) - started


_recorded = False


def record_startup() -> None:
    """Write the seconds from process start to now into ``$BENCH_STARTUP`` (the first call)."""
    global _recorded
    target = os.environ.get("BENCH_STARTUP")
    if target and not _recorded:
        _recorded = True
        Path(target).write_text(f"{since_process_start():.3f}")
