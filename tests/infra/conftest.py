"""testinfra checks of a provisioned cluster (by default the lab).

    fab lab-up && ansible-playbook site.yml -i inventory/lab
    .venv/bin/pytest tests/infra --hosts=ansible://all --ansible-inventory=inventory/lab

(tests/e2e/test_provision.py runs these on a lab of its own, after a second site.yml run that must
change nothing, and again after power cuts of a worker and of the master.)

Per-host tests get testinfra's `host` (one run per inventory host); controller-side tests (port
probes, the DNAT forward) use the `cluster` fixture, read once from the same inventory as Ansible
renders it (scalelab.inventory).  Commands run as root: through sudo when the login user is not root
(set here).  testinfra reads an inventory through `ansible-inventory --list`, which renders no template
(``ansible_host: "{{ scalelab_public_ip }}"``, the workers' ProxyJump): so it is given a copy of the
inventory with the connection values as Ansible renders them, and runs each check over plain ssh with
them (`--force-ansible`, which starts `ansible` for every command, works too: 7x slower on the lab).  The
only addresses the controller contacts are the master's public address and, through ssh, the hosts
of the inventory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scalelab import inventory as _inventory
from scalelab.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv/bin"
DEFAULT_INVENTORY = ROOT / "inventory/lab"

# testinfra's ansible backend runs ansible-inventory / ansible from PATH: use the project's.
if str(VENV_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")])


def inventory_path(config) -> Path:
    """--ansible-inventory, else $SCALELAB_INVENTORY, else inventory/lab."""
    inv = config.getoption("ansible_inventory", default=None) or os.environ.get("SCALELAB_INVENTORY") \
        or str(DEFAULT_INVENTORY)
    return Path(inv) if Path(inv).is_absolute() else ROOT / inv


_SKIP = pytest.StashKey[str]()
_VIEW = pytest.StashKey[_inventory.Cluster]()
_RENDERED = pytest.StashKey[Path]()
# Variables the checks compare the hosts with, besides the controller's own (scalelab.inventory).
CHECKED_VARS = ("scalelab_private_interface", "scalelab_private_cidr", "scalelab_public_interface",
                "ray_num_cpus")
# What testinfra's ssh backend reads of a host (testinfra.utils.ansible_runner.get_ansible_host).
SSH_VARS = ("ansible_host", "ansible_user", "ansible_port", "ansible_ssh_common_args", "ansible_ssh_extra_args",
            "ansible_ssh_private_key_file")


def rendered_inventory(view: _inventory.Cluster, out: Path) -> Path:
    """The inventory's groups and hosts with nothing but their ssh values, as Ansible renders them, and
    one shared connection per host for the whole run, its socket beside the file (testinfra opens an ssh
    per command otherwise: ansible.cfg's ControlMaster has no ControlPath outside Ansible; the
    workers' through the master's jump cost ~0.4 s each)."""
    mux = f"-o ControlMaster=auto -o ControlPath={out.parent}/%C"

    def ssh_vars(node) -> dict:
        v = {k: node.vars[k] for k in SSH_VARS if node.vars.get(k) not in (None, "")}
        v["ansible_ssh_extra_args"] = f"{v.get('ansible_ssh_extra_args', '')} {mux}".strip()
        return v

    def hosts(nodes) -> dict:
        return {n.name: ssh_vars(n) for n in nodes}
    doc = {"all": {"children": {"cluster": {"children": {"masters": {"hosts": hosts([view.master])},
                                                          "workers": {"hosts": hosts(view.nodes[1:])}}}}}}
    out.write_text("# written by tests/infra/conftest.py from " + str(view.inventory) + "\n" + yaml.safe_dump(doc))
    return out


def pytest_configure(config):
    """Decide once whether there is a cluster to check.  Without --hosts testinfra's `host` would be
    this machine; an inventory directory without hosts.yml is a lab that is not up (and testinfra
    would fail to expand it): then every test here is skipped with the reason."""
    inv = inventory_path(config)
    if not config.getoption("hosts", default=None):
        reason = "run with --hosts=ansible://all --ansible-inventory=inventory/lab"
    elif inv.is_dir() and not any((inv / n).exists() for n in ("hosts.yml", "hosts.yaml", "hosts")):
        reason = (f"{inv} has no hosts.yml: bring the lab up (fab lab-up) and provision it "
                  f"(ansible-playbook site.yml -i {inv}) first")
        config.option.hosts = None  # nothing for testinfra to expand; every test is skipped below
    else:
        reason = ""
        if str(config.getoption("hosts")).startswith("ansible://"):
            try:
                view = _inventory.load(inv, extra_vars=CHECKED_VARS)
            except UserError as exc:
                raise pytest.UsageError(str(exc)) from None
            config.stash[_VIEW] = view
            if not config.getoption("force_ansible", default=False):
                tmp = Path(tempfile.mkdtemp(prefix="scalelab-infra-"))
                config.stash[_RENDERED] = tmp
                config.option.ansible_inventory = str(rendered_inventory(view, tmp / "hosts.yml"))
            config.option.sudo = True  # the checks read root's view
    config.stash[_SKIP] = reason


def pytest_unconfigure(config):
    tmp = config.stash.get(_RENDERED, None)
    if tmp is not None:
        for sock in tmp.iterdir():   # the shared connections this run opened (hosts.yml aside)
            if sock.is_socket():
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "scalelab-infra"],
                               capture_output=True, timeout=30, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    reason = config.stash.get(_SKIP, "")
    if not reason:
        return
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Cluster:
    """The controller's view (scalelab.inventory: variables rendered by Ansible) for checks that
    probe from the controller or need one host's shell."""
    view: _inventory.Cluster

    @property
    def inventory(self) -> Path:
        return self.view.inventory

    @property
    def hostvars(self) -> dict[str, dict]:
        return {n.name: n.vars for n in self.view.nodes}

    @property
    def master(self) -> str:
        return self.view.master.name

    @property
    def workers(self) -> list[str]:
        return [n.name for n in self.view.nodes[1:]]

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.view.nodes]

    def private_ip(self, name: str) -> str:
        return self.view.node(name).private_ip

    @property
    def public_ip(self) -> str:
        return self.view.master.vars["scalelab_public_ip"]

    @property
    def forwards(self) -> list[dict]:
        return self.view.master.vars.get("scalelab_port_forwards") or []

    @property
    def cluster_user(self) -> str:
        return str(_inventory.node_var(self.view, "scalelab_cluster_user"))

    def ssh(self, name: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`command` as root on an inventory host, the way the controller runs it (its ssh arguments,
        host key checking on, sudo when the login is not root), without connection sharing, so that it
        works right after a host was killed and started again."""
        n = self.view.node(name)
        argv = n.ssh_argv("-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=10")
        return subprocess.run([*argv, n.as_root(command)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster(request) -> Cluster:
    view = request.config.stash.get(_VIEW, None)
    return Cluster(view or _inventory.load(inventory_path(request.config), extra_vars=CHECKED_VARS))


@pytest.fixture
def name(host) -> str:
    """The inventory name of testinfra's current host."""
    return host.backend.get_hostname()
