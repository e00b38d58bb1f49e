"""The local lab: systemd-nspawn hosts on overlays of one cached debootstrap'd Debian base.

Topology (the seed's): a *public* bridge holding the controller and the master's public interface, and
a *private* bridge holding the master's private interface and the workers, on which the controller has
no address.  Workers have no default route at creation; the NAT roles make the master their gateway.

Each host runs under a small bash supervisor in its own cgroup (cgroup2 ``unified`` and the v1
``systemd`` hierarchy): the supervisor starts ``systemd-nspawn --boot``, attaches the veth ends to the
bridges and relaunches on exit code 133 (a reboot from inside).  ``kill`` writes 1 to the host's
``cgroup.kill``: a power cut, the disk (overlay upper dir) stays.

Lab egress goes only to the package registries (by address, ports 80/443); nothing addressed to the
lab's subnets can leave the machine (the private subnet has an ``unreachable`` route).

Needs root and: debootstrap, systemd-container, iptables, dnsmasq-base (``make lab-deps``).

This file holds the verbs (`fab lab-up`, `lab-down`, `lab-kill`, `lab-start`, one at a time per lab;
`lab-status` only reads); each concern they use is a module of its own: :mod:`.prereqs`, :mod:`.base`,
:mod:`.statefile`, :mod:`.cgroups`, :mod:`.shared`, :mod:`.network`, :mod:`.egress`, :mod:`.hosts`,
and :mod:`.system` beneath them all.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scalelab.errors import UserError
from scalelab.lab.base import base_path, build_base
from scalelab.lab.cgroups import CGROUP_ROOTS, host_cgroups, host_running, rmdir_tree
from scalelab.lab.hosts import (
    boot,
    ensure_key,
    first_boot_setup,
    host_root,
    kill_host,
    mount_host,
    ssh_cmd,
    write_access_files,
)
from scalelab.lab.network import network_down, network_up
from scalelab.lab.prereqs import check_prerequisites
from scalelab.lab.shared import claim_nspawn_rundir, release_shared
from scalelab.lab.statefile import exclusive, load_state, save_state, spec_from_state, state_file
from scalelab.lab.system import Progress, echo, is_mounted, sh
from scalelab.labspec import LabSpec


def _one_at_a_time(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The verb runs under :func:`exclusive`, after the prerequisites' check (the lock's directory
    needs root)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def locked(spec: LabSpec, *args: Any, **kwargs: Any) -> Any:
            check_prerequisites()
            with exclusive(spec, verb):
                return fn(spec, *args, **kwargs)
        return locked
    return wrap


@_one_at_a_time("up")
def up(spec: LabSpec, say: Progress = echo, rebuild_base: bool = False) -> dict:
    """Bring the lab up (idempotent): base, network, hosts, access files; wait for ssh everywhere.

    On a running lab with fewer workers it grows: the new hosts boot, the others keep running, and
    the inventory names them all (then `fab provision` takes the new ones into the cluster).
    rebuild_base: debootstrap the base afresh first (the lab must be down: its hosts run on it).
    """
    state = load_state(spec)
    if rebuild_base:
        if state:
            raise UserError("the lab is up and its hosts run on the base: `fab lab-down` first, "
                            "then `fab lab-up --rebuild-base`")
        shutil.rmtree(base_path(spec), ignore_errors=True)
    if state and int(state.get("workers", spec.workers)) > spec.workers:
        raise UserError(f"the lab has {state['workers']} workers and cannot shrink to {spec.workers}: "
                        "`fab lab-down` first")
    t0 = time.monotonic()
    base = build_base(spec, say)
    t_base = time.monotonic() - t0
    state = state or {"name": spec.name, "created": time.time()}
    state["workers"] = spec.workers
    claim_nspawn_rundir()
    state["base"] = str(base)
    save_state(spec, state)
    net = network_up(spec, say)
    state["registry_ips"] = net["registry_ips"]
    state["dnsmasq_pid"] = net["dnsmasq_pid"]
    save_state(spec, state)
    pubkey = ensure_key(spec)
    for h in spec.hosts:
        root = mount_host(spec, h, base)
        first_boot_setup(spec, h, root, pubkey)
    write_access_files(spec)
    boot(spec, spec.hosts, say)
    state["up_seconds"] = round(time.monotonic() - t0 - t_base, 1)
    state["base_seconds"] = round(t_base, 1)
    save_state(spec, state)
    return state


@_one_at_a_time("down")
def down(spec: LabSpec, say: Progress = echo, keep_disks: bool = False) -> None:
    """Stop every host, remove the network, the mounts and (unless keep_disks) the hosts' disks."""
    state = load_state(spec)
    spec = spec_from_state(spec)
    for h in spec.hosts:
        if host_running(spec, h.name):
            say(f"stopping {h.name}")
            kill_host(spec, h.name)
        for cg in host_cgroups(spec, h.name):
            rmdir_tree(cg)
        root = host_root(spec, h.name)
        if is_mounted(root):
            sh("umount", str(root))
    for root in CGROUP_ROOTS:
        rmdir_tree(root / spec.name)
    network_down(spec)
    release_shared(state)
    for f in (spec.hosts_file, spec.ssh_config, spec.known_hosts):
        f.unlink(missing_ok=True)
    if not keep_disks:
        _remove_disks(spec.state_dir / "hosts", say)
        state_file(spec).unlink(missing_ok=True)


def _remove_disks(hosts_dir: Path, say: Progress) -> None:
    """The hosts' disks (each an overlay's upper layer: a venv, a JDK, Hadoop; GBs of small files), one
    thread per host: unlinking waits on the disk, and side by side it takes about half as long (three
    2.5 GB trees on a 2-core VM: 45 s one after another, 23 s at once)."""
    disks = [d for d in hosts_dir.iterdir() if d.is_dir() and not d.is_symlink()] if hosts_dir.is_dir() else []
    if disks:
        say(f"removing the disks of {', '.join(d.name for d in disks)}")
        with ThreadPoolExecutor(max_workers=len(disks)) as pool:
            list(pool.map(functools.partial(shutil.rmtree, ignore_errors=True), disks))
    shutil.rmtree(hosts_dir, ignore_errors=True)


@_one_at_a_time("kill")
def kill(spec: LabSpec, host: str) -> None:
    spec = spec_from_state(spec)
    spec.host(host)
    if not host_running(spec, host):
        raise UserError(f"{host} is not running (start it with `fab lab-start {host}`)")
    kill_host(spec, host)


@_one_at_a_time("start")
def start(spec: LabSpec, host: str, say: Progress = echo) -> None:
    spec = spec_from_state(spec)
    h = spec.host(host)
    state = load_state(spec)
    if not state:
        raise UserError("the lab is not up: run `fab lab-up`")
    if host_running(spec, host):
        say(f"{host} is already running")
        return
    mount_host(spec, h, Path(state["base"]))
    boot(spec, [h], say)


def status(spec: LabSpec) -> list[dict]:
    """One row per host: running, addresses, ssh answering."""
    spec = spec_from_state(spec)
    rows = []
    up_state = load_state(spec) is not None
    for h in spec.hosts:
        running = host_running(spec, h.name)
        ssh_ok = False
        if running and spec.ssh_config.exists():
            try:
                ssh_ok = subprocess.run(ssh_cmd(spec, h.name, "true"), capture_output=True,
                                        timeout=15).returncode == 0
            except subprocess.TimeoutExpired:
                ssh_ok = False
        rows.append({"host": h.name, "group": h.group, "state": "running" if running else
                     ("stopped" if up_state else "absent"), "private_ip": h.private_ip,
                     "public_ip": h.public_ip or "-", "ssh": "ok" if ssh_ok else "-"})
    return rows
