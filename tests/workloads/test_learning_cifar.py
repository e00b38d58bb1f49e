"""CIFAR PBT: 4 trials on the synthetic CIFAR-format set must learn well above chance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pbt_learns_well_above_chance(tmp_path):
    out = tmp_path / "rec.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["SCALELAB_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "workloads.cifar_pbt", "--framework", "ray", "--workers", "4", "--threads", "1",
           "--trials", "4", "--epochs", "3", "--perturbation-interval", "1", "--storage", str(tmp_path / "ray"),
           "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "will be ignored" not in proc.stdout + proc.stderr   # Tune took --workers as the trials at once
    rec = json.loads(out.read_text())
    m = rec["metrics"]
    assert rec["status"] == "ok"
    assert m["accuracy"] > 0.5, m                          # chance is 0.1; the seed's run scored 0.109
    assert m["baseline"]["accuracy"] > 0.3
    assert set(m["best_config"]) == {"lr", "dropout", "batch_size"}
    assert len(m["trials"]) == 4 and all(t["epochs"] == 3 for t in m["trials"])   # no trial lost
    assert m["split_sizes"]["test"] == 1000
    # the best model's curve, one entry per epoch that trained it (a donor's epochs included)
    assert len(m["loss_per_epoch"]) == len(m["val_accuracy_per_epoch"]) == 3, m
    assert m["val_accuracy_per_epoch"][-1] == m["best_val_accuracy"]
