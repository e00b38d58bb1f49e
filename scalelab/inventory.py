"""The cluster as the Ansible inventory describes it, rendered by Ansible itself (templated values such
as ``ansible_host: "{{ scalelab_public_ip }}"`` resolved, as a play sees them).

The inventory is the one source of truth for hosts, groups, addresses and how to reach them; the
runner, `fab status` and the tests all go through :func:`load` and :meth:`Cluster.ssh`.
"""
from __future__ import annotations

import getpass
import json
import os
import re
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
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
HOSTVARS_PLAY = Path(__file__).with_name("ansible") / "hostvars.yml"
UNDEFINED = "__scalelab_undefined__"
# What the controller reads of every host: how to reach it, and where things live on it.
CONNECTION_VARS = ("ansible_host", "ansible_user", "ansible_port", "ansible_ssh_common_args",
                   "ansible_ssh_extra_args", "ansible_ssh_private_key_file",
                   "scalelab_private_ip", "scalelab_public_ip", "scalelab_port_forwards")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Node:
    name: str
    group: str                 # "master" | "workers"
    address: str               # what ssh connects to (ansible_host)
    private_ip: str
    vars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def login_user(self) -> str:
        return str(self.vars.get("ansible_user") or getpass.getuser())

    def as_root(self, command: str, *, own_group: bool = False) -> str:
        """`command` for a root shell on this node: as it is when the login is root, else through
        ``sudo -n`` (a sudo that wants a password fails at once; see :func:`sudo_refused`).
        own_group: the shell leads a process group of its own (``$$`` names it), sudo or not."""
        if own_group:
            command = f"exec setsid --wait sh -c {shlex.quote(command)}"
        if self.login_user == "root":
            return command
        return f"sudo -n sh -c {shlex.quote(command)}"

    def ssh_argv(self, *options: str) -> list[str]:
        """`ssh ... user@address`, from the same connection variables Ansible uses; `options` go first."""
        v = self.vars
        argv = ["ssh", "-o", "BatchMode=yes", *options]
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
            input: str | None = None, root: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `command` on a node (as root with root=True: see :meth:`Node.as_root`)."""
        n = self.node(node) if isinstance(node, str) else node
        remote = n.as_root(command) if root else command
        try:
            proc = subprocess.run([*n.ssh_argv(), remote], capture_output=True, text=True, timeout=timeout,
                                  input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{n.name}: `{command[:80]}` did not finish in {timeout:.0f} s") from None
        if root:
            sudo_refused(n, proc.stderr)
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise RuntimeError(f"{n.name}: `{command[:80]}` failed: {tail}")
        return proc


def sudo_refused(node: Node, stderr: str | bytes) -> None:
    """One line instead of a hang or a puzzle when the login user's sudo wants a password."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    if "sudo: a password is required" in text or "sudo: a terminal is required" in text:
        raise UserError(f"{node.name}: sudo asks {node.login_user} for a password: give {node.login_user} "
                        "passwordless sudo there (NOPASSWD in /etc/sudoers.d), as ~okeanos images do, "
                        "or log in as root (ansible_user)")


def _inventory_groups(path: Path) -> dict[str, Any]:
    proc = subprocess.run([ANSIBLE_INVENTORY, "-i", str(path), "--list"], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"cannot read inventory {path}: {msg}")
    if (wrong := unparsed_file(proc.stderr)) is not None:
        raise UserError(f"cannot read inventory {path}: {wrong}")
    return json.loads(proc.stdout)


def unparsed_file(stderr: str) -> str | None:
    """What is wrong with an inventory file no plugin could parse, from ansible-inventory's warnings
    (it exits 0 and lists the hosts of the other files, if any: a YAML error read as a missing group);
    None where every file parsed."""
    named = re.findall(r"Unable to parse (\S+) as an inventory source", stderr)
    files = [f for f in named if Path(f).is_file()]
    if not files:
        return None
    why = re.search(r"Failed to parse inventory with '(?:yaml|auto)' plugin: (.+)", stderr)
    where = re.search(r"^Origin: (/\S+:\d+:\d+)", stderr, re.MULTILINE)
    detail = f" ({why.group(1).strip().rstrip('.')}{f' at {where.group(1)}' if where else ''})" if why else ""
    return f"{files[0]} is not a valid inventory{detail}; fix it"


def rendered_hostvars(path: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{host: {var: value}} as Ansible renders them for a play (``{{ ... }}`` resolved); a variable no
    host defines is absent.  A value Ansible cannot render is a UserError naming the host and the
    variable."""
    # json on stdout and nothing else (ansible.cfg enables timing callbacks that print there too)
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(path), str(HOSTVARS_PLAY),
                           "-e", json.dumps({"scalelab_controller_vars": ",".join(names)})],
                          capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        msg = (proc.stderr.strip().splitlines() or [f"ansible-playbook exited {proc.returncode}"])[-1]
        raise UserError(f"cannot read inventory {path}: {msg}") from None
    out: dict[str, dict[str, Any]] = {}
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                values = out.setdefault(host, {})
                for item in res.get("results", []):
                    name = item.get("item")
                    if item.get("failed"):
                        why = " ".join(str(item.get("msg", "")).split())
                        raise UserError(f"inventory {path}: host {host}: cannot render {name}: {why[:300]}")
                    if item.get("msg") != UNDEFINED:
                        values[name] = item.get("msg")
    return out


def load(path: Path, extra_vars: Sequence[str] = ()) -> Cluster:
    """The cluster: its nodes (the master first) with CONNECTION_VARS, NODE_DEFAULTS' names and
    `extra_vars` rendered for each."""
    if not path.exists():
        raise UserError(f"inventory {path} does not exist")
    if path.is_dir() and path.name == "lab" and not (path / "hosts.yml").exists():
        raise UserError("the lab is not up (inventory/lab/hosts.yml is missing): run `fab lab-up`")
    data = _inventory_groups(path)
    masters = data.get("masters", {}).get("hosts", [])
    workers = data.get("workers", {}).get("hosts", [])
    if len(masters) != 1:
        raise UserError(f"inventory {path} must have exactly one host in group 'masters' (it has {len(masters)})")
    hostvars = rendered_hostvars(path, tuple(dict.fromkeys((*CONNECTION_VARS, *NODE_DEFAULTS, *extra_vars))))
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
    "scalelab_run_dir": "/var/lib/scalelab/runs",
    "scalelab_torchrun": "/usr/local/bin/scalelab-torchrun",
    "scalelab_ray_env": "/etc/scalelab/ray.env",
    "ray_dashboard_port": 8265,
    "hadoop_enabled": True,
    "hadoop_home": "/opt/hadoop",
    "hadoop_data_path": "/data",
    "hadoop_namenode_rpc_port": 9000,
    "hadoop_namenode_http_port": 9870,
    "hadoop_rm_webapp_port": 8088,
    "hadoop_user": "hadoop",
}


def node_var(cluster: Cluster, key: str) -> Any:
    """A variable as the inventory sets it for the master (rendered by Ansible), else the role's default."""
    value = cluster.groupvars.get(key)
    return NODE_DEFAULTS[key] if value is None else value


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
