"""fab run-experiment on the provisioned lab: both runtimes, 1..3 nodes, checks, a failure, the report.

A worker's power cut in the middle of a run is tests/e2e/test_runs.py's (a failed record naming the node,
the matrix going on, Ray whole again)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from scalelab import inventory as _inventory
from tests.e2e.labutil import BIN, REPO, fab, with_tiny_graph

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def exp(plab, tmp_path_factory):
    """The lab with the tiny graph on every node, and a results directory of this module's own."""
    return with_tiny_graph(plab, tmp_path_factory)


def run(plab, results: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fab"), "run-experiment", *args, "--inventory", str(plab.inventory)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "SCALELAB_RESULTS": str(results)})


def records(results: Path, workload: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / workload).glob("*.json"))]


# One node, and every node with workers on other hosts; two nodes are run by the learning workloads below.
NODE_COUNTS = (1, 3)


@pytest.mark.parametrize("workload, extra", [("pagerank", "--verify"), ("kmeans", "--verify --method global --k 4")])
def test_both_runtimes_agree_across_node_counts(exp, workload: str, extra: str) -> None:
    plab, results = exp
    for nodes in NODE_COUNTS:
        out = run(plab, results, workload, "--nodes", str(nodes), "--framework", "both", "--dataset", "tiny",
                  "--args", extra)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    recs = records(results, workload)
    assert len(recs) == 2 * len(NODE_COUNTS)
    assert all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    assert all(r["verification"] and r["verification"]["passed"] for r in recs)
    assert {(r["framework"], r["nodes"]) for r in recs} == {(f, n) for f in ("ray", "torch") for n in NODE_COUNTS}
    for r in recs:  # the run's environment and resource use of every node it used
        assert len(r["env"]["hosts"]) == r["nodes"]
        assert set(r["resources"]["hosts"]) == set(r["env"]["hosts"])
        assert all(h["samples"] >= 1 for h in r["resources"]["hosts"].values())
    if workload == "pagerank":
        tops = {tuple(x[0] for x in r["metrics"]["top"]) for r in recs}
        assert len(tops) == 1, tops
    else:
        ch = [r["metrics"]["ch_score"] for r in recs]
        assert max(ch) - min(ch) <= 1e-9 * abs(ch[0])


# Small settings: the point is that each learning workload runs across two lab nodes through the
# runner (Ray workers on another node and as another user, Train/Tune storage shared), not its accuracy
# at full size (tests/workloads covers that).
LEARNING = {
    "pneumonia": ("both", "--image-size 64 --epochs 2"),
    "xgboost": ("ray", "--depths 1,3 --rounds 30 --threads 1"),  # trials side by side
    "cifar-pbt": ("ray", "--trials 2 --epochs 2 --perturbation-interval 1 --no-baseline"),
}


@pytest.mark.parametrize("workload", list(LEARNING))
def test_learning_workload_on_two_nodes(exp, workload: str) -> None:
    plab, results = exp
    fw, extra = LEARNING[workload]
    out = run(plab, results, workload, "--nodes", "2", "--framework", fw, "--args", extra, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    recs = records(results, workload)
    assert recs and all(r["status"] == "ok" and r["nodes"] == 2 for r in recs), [r.get("error") for r in recs]
    assert all(r["verification"]["passed"] for r in recs)
    # the runner gives every worker a whole node's CPUs, the same in every framework
    assert len({r["params"]["threads"] for r in recs}) == 1
    if workload == "pneumonia":
        assert {r["framework"] for r in recs} == {"ray", "torch"}
        steps = {tuple(r["metrics"]["steps_per_epoch"]) for r in recs}
        assert len(steps) == 1, steps  # the same optimiser steps in both runtimes
        assert all(r["metrics"]["accuracy"] > r["metrics"]["majority_baseline"] for r in recs)
    elif workload == "xgboost":
        (r,) = recs
        assert r["metrics"]["accuracy"] >= 0.93
    else:
        (r,) = recs
        assert r["metrics"]["accuracy"] > 0.2  # chance is 0.1
        assert len(r["metrics"]["trials"]) == 2


def test_more_nodes_than_exist_fails_fast(exp) -> None:
    plab, results = exp
    t0 = time.monotonic()
    out = run(plab, results, "pagerank", "--nodes", "4", "--dataset", "tiny")
    elapsed = time.monotonic() - t0
    assert out.returncode == 2
    assert "--nodes 4 but the cluster has 3 hosts" in out.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_a_second_run_at_once_is_refused(exp) -> None:
    """A run holding the master (here: its run lock, taken by hand) makes another one fail fast in one line."""
    plab, results = exp
    cl = _inventory.load(plab.inventory)
    holder = subprocess.Popen([*cl.master.ssh_argv(), "flock /var/lib/scalelab/runs/run.lock sleep 12"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)
        out = run(plab, results / "busy", "pagerank", "--nodes", "2", "--dataset", "tiny")
    finally:
        holder.wait(timeout=60)  # the lock is free again for the tests that follow
    assert out.returncode == 2
    assert "another scalelab run is in progress on master" in out.stderr
    assert not (results / "busy").exists() or not list((results / "busy").rglob("*.json"))


def test_ray_learning_run_refused_without_the_shared_directory(exp) -> None:
    """A worker whose share is not mounted would keep Ray's checkpoints to itself: refused in one line."""
    plab, results = exp
    cl = _inventory.load(plab.inventory)
    worker = cl.node("worker2")
    unit = "srv-scalelab-shared.mount"   # the role's mount unit (the lab mounts at boot, no automount)
    cl.ssh(worker, f"systemctl stop {unit}", root=True)
    try:
        out = run(plab, results / "noshare", "cifar-pbt", "--nodes", "1", "--args",
                      "--trials 2 --epochs 2 --perturbation-interval 1")
    finally:
        cl.ssh(worker, f"systemctl start {unit}", root=True)
    assert out.returncode == 2
    assert "shared directory /srv/scalelab/shared is not the master's on worker2" in out.stderr
    assert "fab provision" in out.stderr


def test_missing_dataset_names_the_command(exp) -> None:
    plab, results = exp
    out = run(plab, results, "kmeans", "--nodes", "2", "--dataset", "data_2")
    assert out.returncode == 2
    assert "fab gen-data data_2" in out.stderr and "fab put-data data_2" in out.stderr
    assert not list((results / "kmeans").glob("*data_2*.json"))


def test_report_from_the_recorded_runs(exp, tmp_path) -> None:
    plab, results = exp
    out = fab("report", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert "report:" in out.stdout
    md = (tmp_path / "rep/report.md").read_text()
    assert "| pagerank | tiny | ray | 3 |" in md and "| kmeans | tiny | torch | 1 |" in md
    figs = {p.name for p in (tmp_path / "rep/figures").glob("*.png")}
    assert {"time_vs_nodes_pagerank_tiny.png", "time_vs_nodes_kmeans_tiny.png", "resources.png"} <= figs
