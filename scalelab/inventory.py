"""The cluster as the Ansible inventory describes it: read once with `ansible-inventory --list`.

The inventory is the one source of truth for hosts, groups, addresses and how to reach them; the
runner, `fab status` and the tests all go through :func:`load` and :meth:`Cluster.ssh`.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.errors import UserError

ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")


@dataclass(frozen=True)
class Node:
    name: str
    group: str                 # "master" | "workers"
    address: str               # what ssh connects to (ansible_host)
    private_ip: str
    vars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def ssh_argv(self) -> list[str]:
        """`ssh ... user@address`, from the same connection variables Ansible uses."""
        v = self.vars
        argv = ["ssh", "-o", "BatchMode=yes"]
        for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
            if v.get(key):
                argv += shlex.split(str(v[key]))
        if v.get("ansible_ssh_private_key_file"):
            argv += ["-i", str(v["ansible_ssh_private_key_file"])]
        if v.get("ansible_port"):
            argv += ["-p", str(v["ansible_port"])]
        user = v.get("ansible_user")
        return argv + [f"{user}@{self.address}" if user else self.address]


@dataclass(frozen=True)
class Cluster:
    inventory: Path
    nodes: tuple[Node, ...]    # the master first, then the workers in inventory order
    groupvars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def master(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UserError(f"no host {name!r} in {self.inventory} (hosts: {', '.join(n.name for n in self.nodes)})")

    def first(self, count: int) -> tuple[Node, ...]:
        """The nodes an N-node experiment uses: the master and the first N-1 workers, like the seed."""
        if count < 1:
            raise UserError(f"--nodes must be at least 1, not {count}")
        if count > len(self.nodes):
            raise UserError(f"--nodes {count} but the cluster has {len(self.nodes)} hosts "
                            f"({', '.join(n.name for n in self.nodes)}): use --nodes 1..{len(self.nodes)}")
        return self.nodes[:count]

    def ssh(self, node: Node | str, command: str, *, timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        n = self.node(node) if isinstance(node, str) else node
        try:
            proc = subprocess.run([*n.ssh_argv(), command], capture_output=True, text=True, timeout=timeout,
                                  input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{n.name}: `{command[:80]}` did not finish in {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise RuntimeError(f"{n.name}: `{command[:80]}` failed: {tail}")
        return proc


def _inventory_json(path: Path) -> dict[str, Any]:
    proc = subprocess.run([ANSIBLE_INVENTORY, "-i", str(path), "--list"], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"cannot read inventory {path}: {msg}")
    return json.loads(proc.stdout)


def load(path: Path) -> Cluster:
    if not path.exists():
        raise UserError(f"inventory {path} does not exist")
    if path.is_dir() and path.name == "lab" and not (path / "hosts.yml").exists():
        raise UserError("the lab is not up (inventory/lab/hosts.yml is missing): run `fab lab-up`")
    data = _inventory_json(path)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    masters = data.get("masters", {}).get("hosts", [])
    workers = data.get("workers", {}).get("hosts", [])
    if len(masters) != 1:
        raise UserError(f"inventory {path} must have exactly one host in group 'masters' (it has {len(masters)})")
    nodes = []
    for name, group in [(masters[0], "master")] + [(w, "workers") for w in workers if w not in masters]:
        v = hostvars.get(name, {})
        priv = v.get("scalelab_private_ip")
        if not priv:
            raise UserError(f"host {name} has no scalelab_private_ip in {path}")
        nodes.append(Node(name, group, str(v.get("ansible_host", name)), str(priv), v))
    return Cluster(path, tuple(nodes), hostvars.get(masters[0], {}))


# Where things live on the nodes: the roles' variables (group_vars) with these defaults.  The runner,
# `fab status`, `fab put-data` and the roles agree through these names.
NODE_DEFAULTS: dict[str, Any] = {
    "scalelab_venv": "/opt/scalelab/venv",
    "scalelab_src": "/opt/scalelab/src",
    "scalelab_data_dir": "/srv/scalelab/data",
    "scalelab_shared_dir": "/srv/scalelab/shared",
    "scalelab_cluster_user": "scalelab",
    "scalelab_run_dir": "/var/tmp/scalelab/runs",
    "scalelab_torchrun": "/usr/local/bin/scalelab-torchrun",
    "scalelab_ray_env": "/etc/scalelab/ray.env",
    "ray_dashboard_port": 8265,
    "hadoop_home": "/opt/hadoop",
    "hadoop_data_path": "/data",
    "hadoop_namenode_rpc_port": 9000,
    "hadoop_user": "hadoop",
}


def node_var(cluster: Cluster, key: str) -> Any:
    """A variable as the inventory sets it (group_vars), else the role's default.  Templated values
    (``{{ ... }}``) are not expanded by ansible-inventory: those fall back to the default too."""
    value = cluster.groupvars.get(key)
    if value is None or (isinstance(value, str) and "{{" in value):
        return NODE_DEFAULTS[key]
    return value


def parallel(fn: Callable[[Node], Any], nodes: Sequence[Node]) -> dict[str, Any]:
    """fn on every node at once; {node name: result or the exception it raised}."""
    out: dict[str, Any] = {}

    def run(n: Node) -> None:
        try:
            out[n.name] = fn(n)
        except Exception as exc:  # reported per node by the caller
            out[n.name] = exc
    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {n.name: out.get(n.name) for n in nodes}
