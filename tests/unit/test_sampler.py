"""The node resource sampler, run here through `sh -c` instead of ssh (the same script and parsing)."""
from __future__ import annotations

import time

from scalelab.sampler import Sampler


def test_sampler_reports_cpu_and_memory_and_stops() -> None:
    s = Sampler({"local": ["sh", "-c"]}, interval=0.2).start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:   # keep one core busy so the CPU figure is not zero
        sum(i * i for i in range(20000))
    summary = s.stop()["local"]
    assert summary["samples"] >= 3
    assert summary["cpu_peak"] >= summary["cpu_mean"] > 0
    assert summary["mem_peak"] >= summary["mem_mean"] > 0
    assert all(p.poll() is not None for p in s._procs.values())
