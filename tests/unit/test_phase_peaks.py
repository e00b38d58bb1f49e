"""A record's ``peak_rss_gib``: each phase's largest resident size, which says where a rank peaked."""
from __future__ import annotations

import json
import subprocess
import sys

from workloads import harness

_PHASES = """
import json, time
import numpy as np
from workloads.harness import track
from workloads.record import timer

timings, peaks = {}, {}
with timer(timings, "small", peaks):
    a = np.ones(1 << 20)
with timer(timings, "large", peaks):
    b = np.ones(48 << 20)  # 384 MiB, touched
    del b
with timer(timings, "after", peaks):
    time.sleep(0.01)
print(json.dumps({"gib": track.rank_peaks(None, peaks), "timed": sorted(timings)}))
"""


def run_phases() -> subprocess.CompletedProcess:
    """:data:`_PHASES` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", _PHASES], capture_output=True, text=True, timeout=120,
                          cwd=harness.REPO_ROOT, env={"PYTHONPATH": harness.REPO_ROOT, "PATH": "/usr/bin:/bin"})


def test_each_phase_has_its_own_peak() -> None:
    """384 MiB touched and freed in "large": that phase's peak is about that above the others' (a mark
    in KiB read as bytes, one taken before the phase ran, or one not restarted, so that "after" kept
    "large"'s, would not pass)."""
    run = run_phases()
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    gib = out["gib"]
    assert out["timed"] == ["after", "large", "small"] and list(gib) == ["small", "large", "after"]
    assert all(len(v) == 1 for v in gib.values())
    assert 0.36 <= gib["large"][0] - gib["small"][0] <= 0.45, gib
    assert 0.36 <= gib["large"][0] - gib["after"][0] <= 0.45 and 0.02 < gib["small"][0] < 0.5, gib


def test_a_child_s_peak_is_its_own_not_its_parent_s() -> None:
    """ru_maxrss starts a child at the size its parent had when it forked: a rank spawned by a large
    process would show the parent's size in its first phase."""
    import numpy as np

    big = np.ones(64 << 20)  # 512 MiB resident in this process
    run = run_phases()
    del big
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["gib"]["small"][0] < 0.3
