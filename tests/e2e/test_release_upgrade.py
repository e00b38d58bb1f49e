"""A lab host of an older Debian release (bullseye) taken to bookworm by os_upgrade, one release at a
time with a reboot, and a second run that changes nothing.  Its own marker: `make test-upgrade`."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.labutil import BIN, REPO, make_inventory, recap, require_lab_machine, running_lab, ssh

pytestmark = [pytest.mark.lab, pytest.mark.release_upgrade]


@pytest.fixture(scope="module")
def oldlab(tmp_path_factory):
    require_lab_machine()
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab", "slupgrade", 76, workers=0, suite="bullseye")
    with running_lab(inv) as spec:
        yield spec


def base_play(spec) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/base.yml", "-i", str(spec.inventory_dir),
                           "-e", json.dumps({"os_upgrade_release_upgrade": True})],
                          cwd=REPO, capture_output=True, text=True, timeout=2400)
    return proc, recap(proc.stdout)


def release(spec) -> str:
    return ssh(spec, "master", ". /etc/os-release && echo $VERSION_ID $VERSION_CODENAME").stdout.strip()


def test_bullseye_is_upgraded_to_bookworm_and_a_rerun_changes_nothing(oldlab) -> None:
    assert release(oldlab) == "11 bullseye"
    booted = ssh(oldlab, "master", "ps -o lstart= -p 1").stdout.strip()
    proc, rc = base_play(oldlab)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "TASK [os_upgrade : Full-upgrade to bookworm]" in proc.stdout, proc.stdout[-5000:]
    assert "[WARNING]" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert release(oldlab) == "12 bookworm"
    sources = ssh(oldlab, "master", "cat /etc/apt/sources.list").stdout
    assert "bookworm" in sources and "bullseye" not in sources
    # it rebooted into the new release (the guest's PID 1 started again)
    assert ssh(oldlab, "master", "ps -o lstart= -p 1").stdout.strip() != booted
    assert ssh(oldlab, "master", "systemctl is-system-running --wait", check=False).stdout.strip() in (
        "running", "degraded")

    again, rc2 = base_play(oldlab)
    assert again.returncode == 0, again.stdout[-5000:]
    assert rc2["master"]["changed"] == 0, again.stdout[-5000:]
