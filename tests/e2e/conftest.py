"""One provisioned lab for the end-to-end tests of the cluster (base, services, experiments).

The session fixture brings up a lab of its own (name `sle2e`, subnets 10.79.x: it never meets a lab
you run by hand) with the master and one worker, runs site.yml on it, and tears it down at the end even
when tests fail.  test_provision.py runs first: it checks that first provision, then grows the cluster
by one worker (a cold provision of the new node beside a re-run of the others) to the seed's three
nodes, on which every other module runs (`plab`; it grows the lab itself when test_provision did not).
test_reconfigure.py runs last: it changes a Ray setting and leaves it, just before the lab goes.
Starting from two nodes rather than three keeps the cold provision on as few hosts as its checks
need, on a 2-core machine; the growth is then a real re-run of site.yml on the first two (it may change
only what names the new node) and the check-mode run after it covers all three.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scalelab import labspec
from tests.e2e.labutil import BIN, REPO, fab, make_inventory, recap, require_lab_machine, ssh


@dataclass
class ProvisionedLab:
    spec: labspec.LabSpec
    inventory: Path
    timings: dict[str, float] = field(default_factory=dict)
    first_output: str = ""

    def playbook(self, *extra: str, timeout: float = 3000) -> tuple[subprocess.CompletedProcess[str], dict]:
        proc = subprocess.run([str(BIN / "ansible-playbook"), "site.yml", "-i", str(self.inventory), *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return proc, recap(proc.stdout)

    def infra(self, *paths: str, k: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run testinfra suites against this lab, as a user would on a real cluster."""
        args = [str(BIN / "python"), "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
                "--hosts=ansible://all", f"--ansible-inventory={self.inventory}"]
        if k:
            args += ["-k", k]
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "SCALELAB_INVENTORY": str(self.inventory)})

    def grow(self) -> subprocess.CompletedProcess[str]:
        """One more worker, as a cluster owner adds one: `fab lab-add-worker` (its inventory now names the
        new worker and, where network.yml has one for it, its SSH port forward), then site.yml everywhere."""
        fab("lab-add-worker", "--inventory", str(self.inventory))
        self.spec = labspec.load_spec(self.inventory, workers=self.spec.workers + 1)
        t0 = time.monotonic()
        proc, _rc = self.playbook()
        self.timings[f"grow_to_{len(self.spec.hosts)}"] = time.monotonic() - t0
        return proc


# The seed's cluster: a master and two workers.  The session lab starts one worker short of it.
SEED_NODES = 3


# test_provision.py first: it starts from the fresh two-node lab and grows it; test_reconfigure.py last:
# it leaves the lab with a setting of its own.  Stable otherwise.
ORDER = {"test_provision.py": 0, "test_reconfigure.py": 2}


def pytest_collection_modifyitems(items) -> None:
    items.sort(key=lambda item: ORDER.get(item.path.name, 1))


@pytest.fixture(scope="session")
def fresh_lab(tmp_path_factory) -> ProvisionedLab:
    """The session lab after its first site.yml: the master and one worker (test_provision grows it)."""
    require_lab_machine()
    inv = make_inventory(tmp_path_factory.mktemp("e2e") / "lab", "sle2e", 79, workers=SEED_NODES - 2)
    spec = labspec.load_spec(inv)
    lab = ProvisionedLab(spec, inv)
    try:
        t0 = time.monotonic()
        fab("lab-up", "--inventory", str(inv))
        lab.timings["lab_up"] = time.monotonic() - t0
        # As a cloud image ships, and seconds old: apt must refresh lists that are missing whatever
        # their directory's age (a cache_valid_time check alone would skip the update).
        for h in spec.hosts:
            ssh(spec, h.name, "rm -rf /var/lib/apt/lists && mkdir -p /var/lib/apt/lists/partial")
        t0 = time.monotonic()
        proc, rc = lab.playbook()
        lab.timings["provision"] = time.monotonic() - t0
        lab.first_output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-60:])
            pytest.fail(f"site.yml failed on the fresh lab:\n{tail}\n{proc.stderr[-2000:]}")
        yield lab
    finally:
        print("\nlab timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in lab.timings.items()))
        fab("lab-down", "--inventory", str(inv), check=False)


@pytest.fixture(scope="session")
def plab(fresh_lab: ProvisionedLab) -> ProvisionedLab:
    """The session lab at the seed's three nodes: test_provision grew it, or it grows here."""
    while len(fresh_lab.spec.hosts) < SEED_NODES:
        proc = fresh_lab.grow()
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-60:])
            pytest.fail(f"site.yml failed growing the lab by one worker:\n{tail}\n{proc.stderr[-2000:]}")
    return fresh_lab
