"""The learning workloads' GPU paths.  On a machine without a CUDA GPU (this project's CI) the real
runs are skipped with that reason, so the gap stays visible; `--device cuda` there must fail in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _cuda(), reason="no CUDA GPU here: the GPU paths (--device cuda, NCCL DDP, "
                                                   "Ray use_gpu, xgboost device=cuda) are untested on this machine")


def run(module: str, *args: str, tmp: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp / "rec.json"
    env = {**os.environ, "SCALELAB_CACHE": str(tmp / "cache")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", module, *args, "--output", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)
    return proc, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.skipif(_cuda(), reason="a CUDA GPU is visible")
@pytest.mark.parametrize("module, args, where", [
    ("workloads.pneumonia", ["--framework", "torch", "--image-size", "64", "--epochs", "1"], "no CUDA GPU is visible"),
    ("workloads.pneumonia", ["--framework", "ray", "--image-size", "64", "--epochs", "1"], "the Ray cluster has no GPU"),
    ("workloads.xgboost", ["--framework", "reference"], "no CUDA GPU is visible"),
])
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, module, args, where):
    """Checked before any rank, worker or trial starts (Ray would otherwise wait for a GPU forever)."""
    proc, rec = run(module, *args, "--workers", "1", "--device", "cuda", tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: --device cuda but {where}; use --device cpu or auto"
    assert rec is not None and rec["status"] == "failed"


@needs_gpu
@pytest.mark.parametrize("framework", ["torch", "ray"])
def test_pneumonia_trains_on_the_gpu(tmp_path, framework):
    proc, rec = run("workloads.pneumonia", "--framework", framework, "--workers", "1", "--device", "auto",
                    "--image-size", "64", "--epochs", "2", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rec["params"]["device"].startswith("cuda")
    assert rec["metrics"]["accuracy"] > rec["metrics"]["majority_baseline"]


@needs_gpu
def test_xgboost_trains_on_the_gpu(tmp_path):
    proc, rec = run("workloads.xgboost", "--framework", "reference", "--depths", "1,3", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rec["params"]["xgb_device"] == "cuda" and rec["metrics"]["accuracy"] >= 0.93
