"""When a run counts from (the same span in every runtime), and the environment of a Ray we start."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from workloads import _dist, record


def test_process_start_time_is_this_process_start():
    started = record.process_start_time()
    assert started is not None
    ps = subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True)
    assert abs((time.time() - started) - int(ps.stdout)) <= 1.5
    assert record.process_start_time(2**22 + 12345) is None  # no such process


def test_launch_time_as_a_library_is_now(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert abs(record.launch_time() - time.time()) < 0.5  # pytest started long ago: not counted


def test_launch_time_in_a_torchrun_rank_is_its_agent_start(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert record.launch_time() == pytest.approx(record.process_start_time(os.getppid()), abs=0.02)


def test_a_workload_run_as_a_program_counts_its_interpreter_start():
    code = ("import time; t = time.time(); time.sleep(1.0); "
            "from workloads import record; "
            "print(record.run_main(lambda argv: print(t - record.launch_time()) or 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=_dist.REPO_ROOT, env={**os.environ, "PYTHONPATH": _dist.REPO_ROOT}).stdout.split()
    assert 0.0 < float(out[0]) < 5.0 and out[1] == "0"  # the start was before the script's first line


def test_local_ray_env_turns_token_auth_on_with_a_fresh_token(monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_worker_niceness"):
        monkeypatch.delenv(var, raising=False)
    _dist.local_ray_env()
    first = os.environ["RAY_AUTH_TOKEN"]
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(first) == 64
    assert os.environ["RAY_worker_niceness"] == "0"
    monkeypatch.delenv("RAY_AUTH_MODE")
    _dist.local_ray_env()
    assert os.environ["RAY_AUTH_TOKEN"] != first


def test_local_ray_env_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "15")
    _dist.local_ray_env()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ
    assert os.environ["RAY_worker_niceness"] == "15"
