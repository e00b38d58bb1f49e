"""site.yml on fresh lab hosts: succeeds, is idempotent, grows the cluster, and what it sets up survives
power cuts.  Runs first, on the session lab's master and one worker (`fresh_lab`), and leaves it grown to
the seed's three nodes for the other modules (tests/e2e/conftest.py)."""
from __future__ import annotations

import re
import time

import pytest

from scalelab import inventory as _inventory
from tests.e2e.labutil import daemons, fab

pytestmark = pytest.mark.lab


HDFS = ". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh; cd /tmp; sudo -n -E -u hadoop $HADOOP_HOME/bin/hdfs "
NAME_VERSION = "cat /var/lib/hadoop/hdfs/name/current/VERSION"


def _changed_tasks(out: str) -> str:
    """The tasks that reported changed (or failed) and on which hosts, from ansible-playbook's output."""
    hits, task = [], None
    for line in out.splitlines():
        m = re.match(r"TASK \[(.+?)\]", line)
        if m:
            task = m.group(1)
        elif re.match(r"(changed|fatal|failed): \[", line):
            hits.append(f"{task}: {line[:200]}")
    return "\n".join(hits[:40])


def test_provision_from_empty_package_lists_prints_no_warnings(fresh_lab) -> None:
    """The fixture emptied every host's apt lists seconds before site.yml (and the roles installed their
    packages regardless); a healthy provision prints no warning (no inventory parse noise either)."""
    out = fresh_lab.first_output
    warnings = [line for line in out.splitlines() if "[WARNING]" in line or "Failed to parse" in line]
    assert not warnings, "\n".join(warnings[:20])
    assert "Install sshfs" in out and "Refresh the package lists when they are missing or stale" in out


def test_base_infra(fresh_lab) -> None:
    out = fresh_lab.infra("tests/infra/test_base.py")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


@pytest.mark.parametrize("host", ["worker1", "master"])
def test_base_survives_a_power_cut(fresh_lab, host: str) -> None:
    inv = str(fresh_lab.inventory)
    fab("lab-kill", host, "--inventory", inv)
    fab("lab-start", host, "--inventory", inv)
    out = fresh_lab.infra("tests/infra/test_base.py", k="route or hosts or nat or forward")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_check_mode_on_a_provisioned_cluster_changes_nothing(fresh_lab) -> None:
    """`ansible-playbook site.yml --check` on a provisioned cluster: no task fails, none would change."""
    proc, rc = fresh_lab.playbook("--check", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {h.name for h in fresh_lab.spec.hosts} <= set(rc), rc
    changed = {h: v["changed"] for h, v in rc.items() if v["changed"] or v["failed"]}
    assert not changed, f"--check would change something: {changed}:\n{_changed_tasks(proc.stdout)}"


def _units(running: dict[str, str], prefix: str) -> dict[str, str]:
    """The running units (-> main PID) whose names start with ``prefix``."""
    return {u: pid for u, pid in running.items() if u.startswith(prefix)}


def test_growing_the_cluster_by_one_worker(fresh_lab) -> None:
    """`fab lab-add-worker` (and its port forward), provision: the new node is in /etc/hosts, the SSH mesh,
    the master's forwards and Ray everywhere; on the others Ray kept running and Hadoop, whose files
    changed, restarted.  The next test re-runs site.yml on the grown cluster; the later suites check it."""
    old = [h.name for h in fresh_lab.spec.hosts]
    before = {h: daemons(fresh_lab.spec, h) for h in old}
    assert all(_units(before[h], "ray-") and _units(before[h], "hadoop-") for h in old), before
    proc = fresh_lab.grow()
    new = fresh_lab.spec.hosts[-1].name
    assert new not in old and new in (fresh_lab.inventory / "hosts.yml").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    after = {h: daemons(fresh_lab.spec, h) for h in old}
    for h in old:
        assert _units(after[h], "ray-") == _units(before[h], "ray-"), \
            f"{h}: Ray was restarted on a node already in the cluster: {before[h]} -> {after[h]}"
        # Hadoop's files on the old nodes did change (workers names the new node, dfs.replication 2 -> 3):
        # the handler restarts every running Hadoop daemon with them.
        restarted = _units(after[h], "hadoop-")
        kept = [u for u, pid in restarted.items() if before[h].get(u) == pid]
        assert set(restarted) == set(_units(before[h], "hadoop-")) and not kept, \
            f"{h}: Hadoop daemons not restarted after their files changed: {before[h]} -> {after[h]}"
    out = fresh_lab.infra("tests/infra/test_base.py", k="hosts or mesh or nat or forward")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    n = len(fresh_lab.spec.hosts)
    status = fab("status", "--inventory", str(fresh_lab.inventory), check=False)
    assert f"ray: {n}/{n} nodes alive" in status.stdout, status.stdout + status.stderr


def test_a_further_run_changes_nothing_and_keeps_hdfs_data(fresh_lab) -> None:
    """site.yml again on the grown cluster (two nodes provisioned twice, the new one once; check mode
    above showed the first provision would change nothing) changes nothing on any node and keeps HDFS's
    data: the NameNode is not formatted again (same cluster and namespace ids) and a file written before
    is still there."""
    cl = _inventory.load(fresh_lab.inventory)
    before = cl.ssh(cl.master, NAME_VERSION, root=True).stdout
    put = cl.ssh(cl.master, f"echo kept | ({HDFS} dfs -put -f - /data/provision_e2e.txt)", root=True, check=False)
    assert put.returncode == 0, put.stderr[-1500:]
    t0 = time.monotonic()
    proc, rc = fresh_lab.playbook()
    fresh_lab.timings["rerun"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:]
    ids = [re.findall(r"^(clusterID|namespaceID)=(.*)$", v, re.M) for v in (before, cl.ssh(cl.master, NAME_VERSION, root=True).stdout)]
    assert len(ids[0]) == 2 and ids[0] == ids[1], ids
    cat = cl.ssh(cl.master, f"{HDFS} dfs -cat /data/provision_e2e.txt", root=True, check=False)
    assert cat.stdout.strip() == "kept", cat.stderr[-1500:]
    hosts = {h.name for h in fresh_lab.spec.hosts}
    assert hosts <= set(rc), rc
    changed = {h: v["changed"] for h, v in rc.items() if v["changed"]}
    assert not changed, f"a further site.yml run changed something: {changed}:\n{_changed_tasks(proc.stdout)}"
