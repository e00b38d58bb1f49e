"""Runs you can stop and trust, on the provisioned lab: Ctrl-C and a lost controller stop every
process of a run on every node within 20 s, a planted link changes nothing, a worker power-cut fails
one matrix cell and the matrix goes on, stale workloads code is refused until `fab sync-code`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scalelab import inventory as _inventory
from scalelab import provenance
from tests.e2e.labutil import BIN, REPO, fab, ssh, wait_ray_whole, with_tiny_graph

pytestmark = pytest.mark.lab

STOP_WITHIN_S = 20
# A PageRank that runs until it is stopped (no convergence, huge iteration cap).
ENDLESS = ("pagerank", "--dataset", "tiny", "--args", "--max-iter 10000000 --tol 0", "--timeout", "300")


@pytest.fixture(scope="module")
def lab(plab, tmp_path_factory):
    """The lab with the tiny graph on every node, and a results directory of this module's own."""
    return with_tiny_graph(plab, tmp_path_factory)


def fab_args(plab, results: Path, *args: str) -> tuple[list[str], dict]:
    return ([str(BIN / "fab"), *args, "--inventory", str(plab.inventory)],
            {**os.environ, "SCALELAB_RESULTS": str(results)})


def start(plab, results: Path, *args: str) -> subprocess.Popen[str]:
    """`fab ARGS` in a session of its own (so that the test can end it and its ssh clients at once)."""
    argv, env = fab_args(plab, results, *args)
    return subprocess.Popen(argv, cwd=REPO, env={**env, "PYTHONFAULTHANDLER": "1"}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def ended(plab, proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """fab's output once it exits.  Past `timeout` it is a failure that shows where every thread of fab
    stood (SIGABRT: Python's fault handler prints their stacks), and the run is aborted on every node so
    the tests after this one do not meet it."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            fab("abort", "--inventory", str(plab.inventory), check=False)
        raise AssertionError(f"fab did not exit within {timeout:.0f} s; it printed:\n{out[-3000:]}\n"
                             f"{err[-8000:]}") from None


def run_processes(plab, hosts) -> dict[str, str]:
    """What is left of scalelab runs on each host: their units and every process of a workload."""
    out = {}
    for h in hosts:
        p = ssh(plab.spec, h, "systemctl list-units --plain --no-legend 'scalelab-run-*'; "
                "ps -eo pid,user,args | grep -E 'workloads\\.|torchrun|scalelab-torchrun|ray::(PageRank|Rank)' "
                "| grep -v grep; true")
        if p.stdout.strip():
            out[h] = p.stdout.strip()
    return out


def wait_running(plab, hosts, proc: subprocess.Popen, timeout: float = 120, settle: float = 5) -> None:
    """Until the run's unit is active on every host (and has had ``settle`` seconds of work)."""
    deadline = time.monotonic() + timeout
    while True:
        active = [h for h in hosts if "scalelab-run-" in ssh(plab.spec, h, "systemctl list-units --plain "
                                                                          "--no-legend --state=active "
                                                                          "'scalelab-run-*'").stdout]
        if len(active) == len(hosts):
            time.sleep(settle)
            return
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"the run did not start on {set(hosts) - set(active)}"
        time.sleep(1)


def wait_clean(plab, hosts) -> float:
    """Seconds until no run process is left on any host; fails past STOP_WITHIN_S."""
    t0 = time.monotonic()
    while left := run_processes(plab, hosts):
        assert time.monotonic() - t0 < STOP_WITHIN_S, f"still running after {STOP_WITHIN_S} s: {left}"
        time.sleep(1)
    return time.monotonic() - t0


HOSTS3 = ("master", "worker1", "worker2")


@pytest.mark.parametrize("framework, hosts", [("torch", HOSTS3), ("ray", HOSTS3)])
def test_ctrl_c_stops_the_run_on_every_node(lab, framework: str, hosts) -> None:
    plab, results = lab
    res = results / f"ctrlc-{framework}"
    proc = start(plab, res, "run-experiment", *ENDLESS, "--nodes", "3", "--framework", framework)
    wait_running(plab, hosts if framework == "torch" else ("master",), proc)
    proc.send_signal(signal.SIGINT)  # to fab alone, as a terminal's Ctrl-C reaches it first
    t0 = time.monotonic()
    out, err = ended(plab, proc, 60)
    waited = wait_clean(plab, hosts)
    print(f"{framework}: fab exited {proc.returncode} in {time.monotonic() - t0 - waited:.1f} s, clean after "
          f"{time.monotonic() - t0:.1f} s")
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)", err
    (rec,) = [json.loads(p.read_text()) for p in (res / "pagerank").glob("*.json")]
    assert rec["status"] == "failed" and rec["error"].startswith("interrupted (Ctrl-C)")
    # the lock is free at once: a new run starts and finishes
    argv, env = fab_args(plab, res, "run-experiment", "pagerank", "--dataset", "tiny", "--nodes", "3",
                         "--framework", framework)
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_lost_controller_stops_the_run_on_every_node(lab) -> None:
    """fab and its ssh clients killed outright: nothing on the controller can clean up, the nodes do."""
    plab, results = lab
    proc = start(plab, results / "lost", "run-experiment", *ENDLESS, "--nodes", "3", "--framework", "torch")
    wait_running(plab, HOSTS3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    print(f"lost controller: clean after {wait_clean(plab, HOSTS3):.1f} s")
    assert "run" in fab("runs", "--inventory", str(plab.inventory)).stdout  # `fab runs` answers: nothing left
    assert "scalelab-run-" not in fab("runs", "--inventory", str(plab.inventory)).stdout


def test_fab_abort_stops_a_leftover_run(lab) -> None:
    """A run started on a node by hand (as a controller that vanished would leave it): `fab runs` lists
    it, `fab abort` stops it and frees the lock."""
    plab, _ = lab
    ssh(plab.spec, "worker1", "systemd-run --quiet --unit=scalelab-run-leftover-1 --uid=scalelab --gid=scalelab "
        "-- flock /var/lib/scalelab/runs/run.lock sleep 600")
    listed = fab("runs", "--inventory", str(plab.inventory)).stdout
    assert "worker1" in listed and "leftover-1" in listed
    out = fab("abort", "--inventory", str(plab.inventory)).stdout
    assert "worker1: stopped leftover-1" in out
    assert ssh(plab.spec, "worker1", "flock --nonblock /var/lib/scalelab/runs/run.lock true", check=False).returncode == 0
    bad = subprocess.run([*fab_args(plab, Path("/nonexistent"), "abort", "--run", "../etc")[0]], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "run id '../etc'" in bad.stderr


def test_a_planted_link_changes_nothing(lab) -> None:
    """The old world-writable place, planted with a link to /etc by an unprivileged user; and the run
    state's parent, which such a user cannot write to."""
    plab, results = lab
    cl = _inventory.load(plab.inventory)
    login = cl.master.login_user
    plant = "mkdir -p /var/tmp/scalelab && ln -sfn /etc /var/tmp/scalelab/runs"
    ssh(plab.spec, "master", "rm -rf /var/tmp/scalelab")  # as an older provision left it
    ssh(plab.spec, "master", f"runuser -u {login} -- sh -c '{plant}'")
    denied = ssh(plab.spec, "master", f"runuser -u {login} -- ln -s /etc /var/lib/scalelab/evil", check=False)
    assert denied.returncode != 0
    argv, env = fab_args(plab, results / "link", "run-experiment", "pagerank", "--dataset", "tiny", "--nodes", "1",
                         "--framework", "torch")
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    owners = ssh(plab.spec, "master", "stat -c '%U:%G %a' /etc /var/lib/scalelab /var/lib/scalelab/runs").stdout.split("\n")
    assert owners[:3] == ["root:root 755"] * 3, owners
    ssh(plab.spec, "master", "rm -rf /var/tmp/scalelab")


def test_stale_workloads_are_refused_until_sync_code(lab) -> None:
    plab, results = lab
    ssh(plab.spec, "worker1", "echo '# edited on the node' >> /opt/scalelab/src/workloads/pagerank.py")
    argv, env = fab_args(plab, results / "stale", "run-experiment", "pagerank", "--dataset", "tiny", "--nodes", "2",
                         "--framework", "torch")
    refused = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: the workloads on worker1 differ from this checkout's: run `fab sync-code` (or `fab provision`) "
        "to ship them"]
    t0 = time.monotonic()
    fab("sync-code", "--inventory", str(plab.inventory))
    print(f"sync-code: {time.monotonic() - t0:.1f} s")
    ok = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (rec,) = [json.loads(p.read_text()) for p in (results / "stale" / "pagerank").glob("*.json")]
    prov = rec["provenance"]
    assert prov["workloads_hash"] == provenance.code_hash()
    assert {n["workloads_hash"] for n in prov["nodes"].values()} == {provenance.code_hash()}
    assert prov["git"]["commit"] and prov["inventory"]["name"] and prov["params_hash"] and prov["node_lock_hash"]
    for facts in prov["nodes"].values():
        assert facts["cores"] >= 1 and facts["memory_gib"] > 0 and facts["versions"]["torch"]


def test_a_worker_power_cut_fails_one_matrix_cell_and_the_matrix_goes_on(lab) -> None:
    plab, results = lab
    res = results / "matrix"
    inv = str(plab.inventory)
    proc = start(plab, res, "run-matrix", "--workloads", "kmeans", "--frameworks", "torch", "--nodes", "3,2",
                 "--datasets", "tiny", "--timeout", "120")
    try:
        # At once: the tiny k-means cell takes ~9 s in all on a fast machine, and a cut after it
        # finished would fail nothing.
        wait_running(plab, HOSTS3, proc, settle=0)
        fab("lab-kill", "worker2", "--inventory", inv)
        out, err = proc.communicate(timeout=400)
    finally:
        fab("lab-start", "worker2", "--inventory", inv)
        print(f"Ray whole again {wait_ray_whole(plab.inventory):.1f} s after the boot")  # for the tests after
    recs = sorted((json.loads(p.read_text()) for p in (res / "kmeans").glob("*.json")), key=lambda r: -r["nodes"])
    assert [(r["nodes"], r["status"]) for r in recs] == [(3, "failed"), (2, "ok")], out + err
    assert "worker2" in recs[0]["error"]
    assert proc.returncode == 1 and "matrix done: 2 runs, 1 failed" in out
