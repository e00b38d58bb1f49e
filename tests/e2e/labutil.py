"""Helpers for tests that need a lab: they bring it up themselves and tear it down even on failure."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from scalelab import lab, labspec

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def require_lab_machine() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (systemd-nspawn, bridges, iptables)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "dnsmasq", "iptables") if not shutil.which(t)]
    if missing:
        pytest.fail(f"lab tests need {', '.join(missing)}: run `make lab-deps` (make test does)")


def make_inventory(dst: Path, name: str, second_octet: int, workers: int = 2, suite: str | None = None) -> Path:
    """A lab inventory of its own (name, subnets, state dir), so a test's lab never meets the default one.

    SCALELAB_E2E_NAMESPACE=LETTER:OFFSET (e.g. ``h:10``) prefixes every test lab's name with LETTER and
    shifts its subnets by OFFSET, so two checkouts can run the lab tests on one machine at once.
    """
    ns = os.environ.get("SCALELAB_E2E_NAMESPACE")
    if ns:
        letter, _, offset = ns.partition(":")
        if not (len(letter) == 1 and letter.isalpha() and letter.islower() and offset.isdigit()):
            raise ValueError(f"SCALELAB_E2E_NAMESPACE must be LETTER:OFFSET (e.g. h:10), not {ns!r}")
        name, second_octet = letter + name, second_octet + int(offset)
    return labspec.derive_inventory(dst, name, second_octet, workers, suite)


def fab(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "fab"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ray_alive(cl) -> int:
    """Nodes Ray counts alive (ray.nodes() on the master); -1 when it cannot be asked."""
    ray = _cluster.services(cl)["ray"]
    return -1 if ray["error"] else ray["alive"]


def live_ray_node_ids(cl, ip: str) -> set[str]:
    """The NodeIDs Ray has alive at private address ``ip`` (after a power cut and a boot the old entry
    stays alive there, ~30 s, beside the booted node's new one: only a new ID shows it rejoined)."""
    proc = cl.ssh(cl.master, _cluster.ray_nodes_command(cl), timeout=90, check=False, root=True)
    try:
        nodes = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return set()
    return {n["NodeID"] for n in nodes if isinstance(n, dict) and n.get("Alive") and n.get("NodeManagerAddress") == ip}


def wait_ray_whole(inventory_path: Path, timeout: float = 180) -> float:
    """Seconds until Ray counts every node alive, and only those: after a power cut and a boot, the
    node's old entry stays alive for Ray until its health checks fail (~30 s), beside the new one."""
    cl = _inventory.load(inventory_path)
    t0 = time.monotonic()
    while (alive := ray_alive(cl)) != len(cl.nodes):
        assert time.monotonic() - t0 < timeout, f"Ray not back to {len(cl.nodes)} nodes ({alive} alive)"
        time.sleep(3)
    return time.monotonic() - t0


@contextmanager
def running_lab(inventory: Path) -> Iterator[labspec.LabSpec]:
    spec = labspec.load_spec(inventory)
    try:
        fab("lab-up", "--inventory", str(inventory))
        yield spec
    finally:
        fab("lab-down", "--inventory", str(inventory), check=False)


def ssh(spec: labspec.LabSpec, host: str, command: str, timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """`command` as root on a lab host: logged in as the lab's login user, through its sudo."""
    proc = subprocess.run(lab.hosts.ssh_cmd(spec, host, f"sudo -n sh -c {shlex.quote(command)}"),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ssh {host} {command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def daemons(spec: labspec.LabSpec, host: str) -> dict[str, str]:
    """The Hadoop and Ray units running on a lab host -> their main PIDs."""
    out = ssh(spec, host, "for u in $(systemctl list-units --state=running --plain --no-legend 'hadoop-*' 'ray-*' "
                          "| cut -d' ' -f1); do echo \"$u $(systemctl show -p MainPID --value $u)\"; done").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok, changed, unreachable, failed, ...}}."""
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", stdout, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def with_tiny_graph(plab, tmp_path_factory) -> tuple:
    """The lab with the tiny graph on every node (put-data), and a results directory of the caller's own."""
    from scalelab import cluster

    data = tmp_path_factory.mktemp("data")
    subprocess.run([str(BIN / "python"), "-m", "workloads.data", "tiny", "--out", str(data)], cwd=REPO,
                   check=True, capture_output=True, timeout=300)
    cluster.put_data(plab.inventory, "tiny", say=lambda m: None, data_dir=data)
    return plab, tmp_path_factory.mktemp("results")
