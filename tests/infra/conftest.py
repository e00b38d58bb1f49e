"""testinfra checks of a provisioned cluster (by default the lab).

    fab lab-up && ansible-playbook site.yml -i inventory/lab
    .venv/bin/pytest tests/infra --hosts=ansible://all --ansible-inventory=inventory/lab

(tests/e2e/test_provision.py runs these on a lab of its own, after a second site.yml run that must
change nothing, and again after power cuts of a worker and of the master.)

Per-host tests get testinfra's `host` (one run per inventory host); controller-side tests (port
probes, the DNAT forward) use the `cluster` fixture, read once from the same inventory with
`ansible-inventory --list`.  The only addresses the controller contacts are the master's public
address and, through Ansible/ssh, the hosts of the inventory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    config.stash[_SKIP] = reason


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
    inventory: Path
    hostvars: dict
    groups: dict

    @property
    def master(self) -> str:
        return self.groups["masters"][0]

    @property
    def workers(self) -> list[str]:
        return list(self.groups.get("workers", []))

    @property
    def nodes(self) -> list[str]:
        return [self.master, *self.workers]

    def private_ip(self, name: str) -> str:
        return self.hostvars[name]["scalelab_private_ip"]

    @property
    def public_ip(self) -> str:
        return self.hostvars[self.master]["scalelab_public_ip"]

    @property
    def forwards(self) -> list[dict]:
        return self.hostvars[self.master].get("scalelab_port_forwards", [])

    @property
    def cluster_user(self) -> str:
        return self.hostvars[self.master]["scalelab_cluster_user"]

    def ssh_argv(self, name: str, command: str) -> list[str]:
        """ssh to an inventory host the way Ansible does (its ssh args, host key checking on), without
        connection sharing, so that it works right after a host was killed and started again."""
        hv = self.hostvars[name]
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                "-o", "ConnectTimeout=10"]
        argv += shlex.split(hv.get("ansible_ssh_common_args", ""))
        if hv.get("ansible_ssh_private_key_file"):
            argv += ["-i", hv["ansible_ssh_private_key_file"]]
        if hv.get("ansible_port"):
            argv += ["-p", str(hv["ansible_port"])]
        user = hv.get("ansible_user")
        target = hv.get("ansible_host", name)
        argv += [f"{user}@{target}" if user else target, command]
        return argv

    def ssh(self, name: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(name, command), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster(request) -> Cluster:
    inv_path = inventory_path(request.config)
    out = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(inv_path), "--list"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    data = json.loads(out.stdout)
    groups = {name: g.get("hosts", []) for name, g in data.items() if isinstance(g, dict) and name != "_meta"}
    return Cluster(inventory=inv_path, hostvars=data["_meta"]["hostvars"], groups=groups)


@pytest.fixture
def name(host) -> str:
    """The inventory name of testinfra's current host."""
    return host.backend.get_hostname()
