"""A second provisioning run changes nothing on any host (issue 3; kubespray's IDEMPOT_CHECK).

Runs site.yml once more against the inventory under test and reads the PLAY RECAP.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "inventory/lab/hosts.yml").exists():
    pytest.skip("inventory/lab/hosts.yml does not exist: bring the lab up (fab lab-up) and provision it "
                "(ansible-playbook site.yml -i inventory/lab) first", allow_module_level=True)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def test_second_run_changes_nothing(cluster):
    r = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "site.yml", "-i", str(cluster.inventory)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       env={"PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin", "ANSIBLE_FORCE_COLOR": "0",
                            "HOME": str(Path.home()), "LANG": "C.UTF-8"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    recap = {m[0]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m[1:]), strict=True))
             for m in RECAP.findall(out)}
    assert set(cluster.nodes) <= set(recap), recap
    changed = {h: v["changed"] for h, v in recap.items() if v["changed"] or v["failed"] or v["unreachable"]}
    # On failure, show the tasks and what changed in them.
    assert changed == {}, f"{changed}\n" + "\n".join(
        line for line in out.splitlines() if line.startswith(("TASK [", "changed:")))[-6000:]
