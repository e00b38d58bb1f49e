"""What every lab on this machine shares (two checkouts may run labs side by side): IPv4 forwarding
and the tmpfs on :data:`NSPAWN_RUNDIR`.  The first lab up records how it found them; the last one down
puts them back, never one while another lab is up (it would cut that lab's egress)."""
from __future__ import annotations

import re
from pathlib import Path

from scalelab.lab.system import is_mounted, sh

NSPAWN_RUNDIR = Path("/run/systemd/nspawn")
SHARED_STATE = Path("/run/scalelab")  # what the first lab up found, for the last one down
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def labs_up() -> list[str]:
    """The labs whose network is up on this machine, as their chains (FORWARD jumps to each)."""
    out = sh("iptables", "-w", "-S", "FORWARD", check=False).stdout
    return re.findall(r"^-A FORWARD -j (\S+-LAB)$", out, re.M)


def claim_nspawn_rundir() -> None:
    """A tmpfs on :data:`NSPAWN_RUNDIR` where there is none (/run is on disk here; nspawn wants a
    tmpfs there); recorded, so that the last lab down unmounts it."""
    if not is_mounted(NSPAWN_RUNDIR):
        NSPAWN_RUNDIR.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_RUNDIR))
        SHARED_STATE.mkdir(parents=True, exist_ok=True)
        (SHARED_STATE / "nspawn_rundir_mounted").touch()


def claim_ip_forward() -> None:
    """IPv4 forwarding on, for the lab's egress; the first lab up records how it found it."""
    record = SHARED_STATE / "ip_forward_before"
    if not record.exists() or not labs_up():   # (a record with no lab up is a crashed lab's: stale)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")


def release_shared(state: dict | None) -> None:
    """Put back what the labs share (:data:`SHARED_STATE`) once no lab is up."""
    if labs_up():
        return
    record = SHARED_STATE / "ip_forward_before"
    before = record.read_text().strip() if record.exists() else (state or {}).get("ip_forward_before")  # older labs
    if before in ("0", "1"):
        IP_FORWARD.write_text(before + "\n")
    record.unlink(missing_ok=True)
    mounted = SHARED_STATE / "nspawn_rundir_mounted"
    if (mounted.exists() or (state or {}).get("mounted_nspawn_rundir")) and is_mounted(NSPAWN_RUNDIR):
        sh("umount", str(NSPAWN_RUNDIR), check=False)
    mounted.unlink(missing_ok=True)
