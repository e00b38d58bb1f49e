"""How a run is started and stopped on a node, and what it records of where and with what it ran."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from scalelab import provenance, runner
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node

CLUSTER = Cluster(Path("inventory/x"), (Node("master", "master", "10.0.0.1", "10.0.0.1"),
                                        Node("worker1", "workers", "10.0.0.2", "10.0.0.2")),
                  {"scalelab_cluster_user": "scalelab", "scalelab_run_dir": "/var/lib/scalelab/runs"})


def test_the_node_computes_the_same_workloads_hash_as_the_controller(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(provenance.WORKLOADS_DIR, src / "workloads",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "workloads" / "__pycache__").mkdir(exist_ok=True)
    (src / "workloads" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")  # not code
    node = subprocess.run(["sh", "-c", provenance.node_code_hash_command(str(src))], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert node == provenance.code_hash() == provenance.code_hash(src / "workloads")
    (src / "workloads" / "pagerank.py").write_text("# edited\n", encoding="utf-8")
    assert provenance.code_hash(src / "workloads") != node


@pytest.mark.parametrize("bad", ["", "-1", "../etc", "a b", "x;reboot", "a/b", "*"])
def test_run_ids_that_are_not_plain_names_are_refused(bad: str) -> None:
    with pytest.raises(UserError, match="run id"):
        runner.unit_name(bad)


def test_a_rank_runs_as_the_cluster_user_in_its_own_unit_holding_the_lock() -> None:
    wl = runner.workload("pagerank")
    cmd, out = runner._command(CLUSTER, wl, "torch", 2, "pagerank-torch-2n-x", "tiny", ["--max-iter", "3"], 60)
    assert out == "/run/scalelab-run-pagerank-torch-2n-x/record.json"
    run = shlex.split(cmd.rsplit("exec 3<&-; ", 1)[1])
    assert run[:2] == ["systemd-run", "--quiet"]
    for opt in ("--unit=scalelab-run-pagerank-torch-2n-x", "--uid=scalelab", "--gid=scalelab", "--wait",
                "--collect", "--property=RuntimeMaxSec=60", "--property=KillMode=control-group",
                "--setenv=SCALELAB_RDZV_ID=pagerank-torch-2n-x"):
        assert opt in run
    flock = run[run.index("--") + 1:]
    assert flock[:5] == ["flock", "--nonblock", "--conflict-exit-code", "75", "/var/lib/scalelab/runs/run.lock"]
    # the watcher: the controller's ssh ending (stdin at EOF) stops this run's unit, and no other
    assert "cat <&3; systemctl stop --no-block scalelab-run-pagerank-torch-2n-x.service" in cmd


def test_params_hash_tells_parameters_apart() -> None:
    h = provenance.params_hash
    assert h("pagerank", "ray", 2, "tiny", []) == h("pagerank", "ray", 2, "tiny", [])
    assert len({h("pagerank", "ray", 2, "tiny", []), h("pagerank", "ray", 2, "tiny", ["--max-iter", "1"]),
                h("pagerank", "torch", 2, "tiny", []), h("pagerank", "ray", 3, "tiny", [])}) == 4


def test_probe_output_is_parsed_into_node_facts() -> None:
    p = provenance.parse_probe("cpus=4\ncpu_model=Intel Xeon\nmem_kib=2097152\ncode=abc\nlock=0\nunits=\n"
                               'versions={"python": "3.11.2", "ray": "2.9", "torch": null}\nnoise line\n')
    assert p["lock"] == "0" and p["units"] == ""
    assert provenance.node_facts(p) == {"cpu_model": "Intel Xeon", "cores": 4, "memory_gib": 2.0,
                                        "workloads_hash": "abc",
                                        "versions": {"python": "3.11.2", "ray": "2.9", "torch": None}}


def test_the_first_ctrl_c_of_a_run_is_an_event_the_second_interrupts_at_once() -> None:
    """A run's loop sees the first Ctrl-C at its next check (no KeyboardInterrupt half-way through a
    library call, so the cleanup runs whole); a second Ctrl-C interrupts; the old handler comes back."""
    before = signal.getsignal(signal.SIGINT)
    with runner.ctrl_c_as_event() as ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)
        assert ctrl_c.wait(5), "the first Ctrl-C did not set the event"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            ctrl_c.wait(5)  # the handler runs here at the latest
    assert signal.getsignal(signal.SIGINT) is before
