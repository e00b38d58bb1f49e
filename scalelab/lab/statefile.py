"""A lab's state file (``lab.json``: its workers, base, network) and the lock that lets one verb at a
time change it."""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scalelab import labspec
from scalelab.errors import UserError
from scalelab.labspec import LabSpec


def state_file(spec: LabSpec) -> Path:
    """The lab's ``lab.json``: present while the lab is up (or down with its disks kept)."""
    return spec.state_dir / "lab.json"


def load_state(spec: LabSpec) -> dict | None:
    try:
        return json.loads(state_file(spec).read_text())
    except FileNotFoundError:
        return None


@contextmanager
def exclusive(spec: LabSpec, verb: str) -> Iterator[None]:
    """Hold the lab's lock for one verb that changes it.  A second one on the same lab (another
    terminal, a script's cleanup) stops at once in one line, instead of tearing down or booting hosts
    under the first: seen when a `fab lab-down` and a `fab lab-up` met, which left a host whose disk had
    been deleted through its mounted overlay."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    path = spec.state_dir / "lab.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"lab {spec.name} is busy: {holder} is changing it; "
                            "run this again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`fab lab-{verb}` (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_state(spec: LabSpec, state: dict) -> None:
    """Write the state file whole (a temporary file renamed over it: never half-written)."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_file(spec).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file(spec))


def spec_from_state(default: LabSpec) -> LabSpec:
    """The running lab's spec (its worker count may differ from the default's)."""
    st = load_state(default)
    if st and "workers" in st:
        return labspec.load_spec(default.inventory_dir, workers=int(st["workers"]))
    return default
