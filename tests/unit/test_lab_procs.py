"""The lab's reading of cgroups and processes that come and go while it reads (a guest's units, dnsmasq)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalelab import lab, labspec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    unified, v1 = tmp_path / "unified", tmp_path / "systemd"
    monkeypatch.setattr(lab, "CGROUP_ROOTS", (unified, v1))
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

    assert lab.host_pids(spec, "worker1") == {101, 102, 104, 105}
    assert not gone.exists()
    assert lab.host_pids(spec, "worker2") == set()
    assert lab.host_running(spec, "worker1") and not lab.host_running(spec, "worker2")


def test_rmdir_tree_removes_empty_cgroups_deepest_first_and_keeps_a_busy_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "lab"
    (top / "master/payload/system.slice/a.service").mkdir(parents=True)
    gone = top / "master/payload/system.slice/b.service"
    gone.mkdir()
    busy = _cgroup(top / "worker1/payload", [7])  # a directory with a file stands for a cgroup in use
    _vanishes_when_listed(monkeypatch, gone)

    lab._rmdir_tree(top)

    assert not (top / "master").exists()
    assert busy.is_dir() and top.is_dir()
    lab._rmdir_tree(tmp_path / "absent")  # nothing there: nothing to do


def test_comm_names_a_live_process_and_is_empty_for_a_gone_one() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert lab._comm(os.getpid()).startswith("python")
    assert lab._comm(proc.pid) == ""  # reaped: its /proc entry is gone
