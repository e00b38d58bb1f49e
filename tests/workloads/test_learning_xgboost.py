"""Breast-cancer XGBoost: plain reference and Ray Train + Tune grid, tuned on validation logloss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(tmp: Path, *args: str) -> dict:
    out = tmp / "rec.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "workloads.xgboost", *args, "--output", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok"
    return rec


def check_tuned(rec: dict, depths: tuple[int, ...] = (1, 5, 50, 100)) -> None:   # default: the seed's grid
    m = rec["metrics"]
    assert m["accuracy"] >= 0.93, m
    assert 0 < m["logloss"] < 0.3
    assert tuple(sorted(g["max_depth"] for g in m["grid"])) == depths                 # a real grid, every value once
    best = min(m["grid"], key=lambda g: g["valid_logloss"])
    assert m["best_config"]["max_depth"] == best["max_depth"] and m["selected_on"] == "valid-logloss"
    assert len(m["loss_per_epoch"]) == 30 and len(m["valid_logloss_per_round"]) == 30   # 30 rounds
    assert m["loss_per_epoch"][-1] < m["loss_per_epoch"][0]


def test_reference_grid(tmp_path):
    rec = run(tmp_path, "--framework", "reference", "--threads", "1")
    check_tuned(rec)
    assert rec.get("experiment_dir") is None   # no Ray Tune: no experiment directory


@pytest.mark.slow
def test_ray_train_tune_grid(tmp_path):
    """Two depths of the grid (each trial a 2-worker Ray Train run, ~30 s here, one at a time on 2 cores);
    the default four are run by the reference above and timed out by the test below."""
    rec = run(tmp_path, "--framework", "ray", "--workers", "2", "--threads", "1", "--depths", "1,5",
              "--storage", str(tmp_path / "ray"))
    check_tuned(rec, (1, 5))
    assert rec["workers"] == 2 and rec["params"]["concurrent_trials"] >= 1
    # the record names the experiment directory Tune wrote under --storage, with Tune's experiment state
    exp = Path(rec["experiment_dir"])
    assert exp.parent == (tmp_path / "ray").resolve() and exp.name.startswith("xgb-grid-"), exp
    assert list(exp.glob("experiment_state-*.json")) and (exp / "tuner.pkl").is_file(), sorted(exp.iterdir())
    state = json.loads(next(exp.glob("experiment_state-*.json")).read_text())
    assert len(state["trial_data"]) == 2, state.keys()      # one trial per max_depth of the grid


@pytest.mark.slow
def test_ray_tune_grid_past_its_timeout_fails_in_one_line(tmp_path):
    """--timeout covers Ray Tune: the grid stops, the record is failed and says why, one error line."""
    out = tmp_path / "rec.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "workloads.xgboost", "--framework", "ray", "--workers", "2",
                           "--threads", "1", "--timeout", "1", "--storage", str(tmp_path / "ray"), "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=500, env=env)
    rec = json.loads(out.read_text())
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert rec["status"] == "failed" and "the 4 Ray Tune trials did not finish within 1 s" in rec["error"], rec["error"]
    # our one line (Ray may still forward its actors' logs around it while it shuts down)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")] == [
        ln for ln in proc.stderr.splitlines() if ln.startswith("error: the 4 Ray Tune trials did not finish within 1 s")], proc.stderr[-2000:]
    assert "error: the 4 Ray Tune trials did not finish within 1 s" in proc.stderr
