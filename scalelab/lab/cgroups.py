"""A host's processes, found through its cgroups: the supervisor joins the host's cgroup in the
cgroup2 ``unified`` and the v1 ``systemd`` hierarchies, and everything it starts stays under them."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from scalelab.labspec import LabSpec

CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))


def host_cgroups(spec: LabSpec, host: str) -> list[Path]:
    """The host's cgroup in each hierarchy its supervisor joins."""
    return [root / spec.name / host for root in CGROUP_ROOTS]


def _dirs(top: Path, bottom_up: bool = False) -> Iterator[Path]:
    """``top`` and every directory under it. A cgroup can vanish while we walk (a guest's unit stops):
    ``os.walk`` skips a directory it cannot list, where pathlib's ``rglob`` raises (seen in CI)."""
    for dirpath, _dirs, _files in os.walk(top, topdown=not bottom_up):
        yield Path(dirpath)


def host_pids(spec: LabSpec, host: str) -> set[int]:
    """Every process of the host, in every hierarchy its supervisor joined: nspawn and the guest's
    systemd may leave some of them in sub-cgroups of only one hierarchy (seen: only in v1 ``systemd``)."""
    pids: set[int] = set()
    for cg in host_cgroups(spec, host):
        for d in _dirs(cg):
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:  # a sub-cgroup removed while we read it
                pass
    return pids


def host_running(spec: LabSpec, host: str) -> bool:
    return bool(host_pids(spec, host))


def rmdir_tree(path: Path) -> None:
    """Remove an empty cgroup tree, deepest first; a cgroup still in use stays."""
    for d in _dirs(path, bottom_up=True):
        try:
            d.rmdir()
        except OSError:
            pass
