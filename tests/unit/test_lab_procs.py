"""The lab's reading of cgroups and processes that come and go while it reads (a guest's units, dnsmasq)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalelab import lab, labspec
from scalelab.errors import UserError
from scalelab.lab import cgroups, network

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    unified, v1 = tmp_path / "unified", tmp_path / "systemd"
    monkeypatch.setattr(cgroups, "CGROUP_ROOTS", (unified, v1))
    return unified, v1


def _cgroup(path: Path, pids: list[int]) -> Path:
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return path


def _vanishes_when_listed(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """The race CI met: a unit's cgroup is in its parent's listing, then gone when it is listed itself."""
    real = os.scandir

    def scandir(path=".") -> object:
        if isinstance(path, (str, os.PathLike)) and Path(path) == victim and victim.exists():
            shutil.rmtree(victim)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_host_pids_span_both_hierarchies_and_survive_a_vanishing_cgroup(
        roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = labspec.load_spec(REPO / "inventory/lab")
    unified, v1 = (r / spec.name / "worker1" for r in roots)
    _cgroup(unified / "supervisor", [101])
    _cgroup(unified / "payload", [102])
    gone = _cgroup(unified / "payload/system.slice/systemd-update-utmp-runlevel.service", [103])
    _cgroup(unified / "payload/system.slice/ssh.service", [104])
    _cgroup(v1 / "payload/system.slice/ray.service", [105])
    _vanishes_when_listed(monkeypatch, gone)

    assert cgroups.host_pids(spec, "worker1") == {101, 102, 104, 105}
    assert not gone.exists()
    assert cgroups.host_pids(spec, "worker2") == set()
    assert cgroups.host_running(spec, "worker1") and not cgroups.host_running(spec, "worker2")


def test_rmdir_tree_removes_empty_cgroups_deepest_first_and_keeps_a_busy_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "lab"
    (top / "master/payload/system.slice/a.service").mkdir(parents=True)
    gone = top / "master/payload/system.slice/b.service"
    gone.mkdir()
    busy = _cgroup(top / "worker1/payload", [7])  # a directory with a file stands for a cgroup in use
    _vanishes_when_listed(monkeypatch, gone)

    cgroups.rmdir_tree(top)

    assert not (top / "master").exists()
    assert busy.is_dir() and top.is_dir()
    cgroups.rmdir_tree(tmp_path / "absent")  # nothing there: nothing to do


def test_comm_names_a_live_process_and_is_empty_for_a_gone_one() -> None:
    proc = subprocess.Popen(["sleep", "60"])  # a name of our choosing (pytest's own is pytest or python)
    try:
        deadline = time.monotonic() + 10  # the child may not have reached its exec yet
        while network._comm(proc.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert network._comm(proc.pid) == "sleep"
    finally:
        proc.kill()
        proc.wait()
    assert network._comm(proc.pid) == ""  # reaped: its /proc entry is gone


HOLD = """
import sys, time
from pathlib import Path
from scalelab import lab, labspec
import dataclasses
spec = dataclasses.replace(labspec.load_spec(Path(sys.argv[1])), state_dir=Path(sys.argv[2]))
with lab.exclusive(spec, "down"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_verb_on_a_busy_lab_stops_in_one_line_naming_the_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `fab lab-*` on one lab (a CI cleanup's lab-down beside a lab-up) once deleted a host's disk
    through its mounted overlay: the second now stops before it touches anything."""
    spec = dataclasses.replace(labspec.load_spec(REPO / "inventory/lab"), state_dir=tmp_path / "state")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO / "inventory/lab"), str(spec.state_dir)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(lab, "check_prerequisites", lambda: None)
        touched: list[str] = []
        monkeypatch.setattr(lab, "load_state", lambda s: touched.append("state"))
        for verb, call in (("up", lambda: lab.up(spec)), ("down", lambda: lab.down(spec)),
                           ("kill", lambda: lab.kill(spec, "worker1")), ("start", lambda: lab.start(spec, "worker1"))):
            with pytest.raises(UserError) as err:
                call()
            assert str(err.value) == (f"lab {spec.name} is busy: `fab lab-down` (pid {holder.pid}) is changing it; "
                                      "run this again when it has finished"), verb
        assert touched == []  # none of them read the lab's state, let alone changed it
    finally:
        holder.communicate("", timeout=30)
    with lab.exclusive(spec, "up"):  # the holder has gone: the lock is free, and it names its new holder
        assert (spec.state_dir / "lab.lock").read_text() == f"`fab lab-up` (pid {os.getpid()})"


def test_rebuild_base_under_a_running_lab_stops_and_keeps_the_base(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(labspec.load_spec(REPO / "inventory/lab"), state_dir=tmp_path / "state",
                               base_cache=tmp_path / "cache")
    (spec.state_dir).mkdir()
    (spec.state_dir / "lab.json").write_text('{"name": "lab", "workers": 2}')
    base = lab.base.base_path(spec)
    base.mkdir(parents=True)
    monkeypatch.setattr(lab, "check_prerequisites", lambda: None)
    with pytest.raises(UserError, match=r"the lab is up and its hosts run on the base: `fab lab-down` first"):
        lab.up(spec, rebuild_base=True)
    assert base.is_dir()
