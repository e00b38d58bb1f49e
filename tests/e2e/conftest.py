"""One provisioned lab for the end-to-end tests of the cluster (base, services, experiments).

The session fixture brings up a lab of its own (name `sle2e`, subnets 10.79.x: it never meets a lab
you run by hand), runs site.yml on it, and tears it down at the end even when tests fail.
"""
from __future__ import annotations

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
                              env={**__import__("os").environ, "SCALELAB_INVENTORY": str(self.inventory)})


@pytest.fixture(scope="session")
def plab(tmp_path_factory) -> ProvisionedLab:
    require_lab_machine()
    inv = make_inventory(tmp_path_factory.mktemp("e2e") / "lab", "sle2e", 79)
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
