"""site.yml on fresh lab hosts: succeeds, grows the cluster (a real re-run on the old nodes, which changes
only what names the new node) and, run again in check mode, would change nothing.  Runs first, on the
session lab's master and one worker (`fresh_lab`), and leaves it grown to the seed's three nodes for the
other modules (tests/e2e/conftest.py).  What it sets up surviving power cuts is checked where each host
is cut: tests/e2e/test_hadoop.py (a worker and the master, every layer)."""
from __future__ import annotations

import re
import time

import pytest

from scalelab import inventory as _inventory
from tests.e2e.labutil import daemons, fab

pytestmark = pytest.mark.lab


HDFS = ". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh; cd /tmp; sudo -n -E -u hadoop $HADOOP_HOME/bin/hdfs "
NAME_VERSION = "cat /var/lib/hadoop/hdfs/name/current/VERSION"


def _task_results(out: str) -> list[tuple[str, str, str, str]]:
    """(task or handler, status, host, line) of each changed, fatal or failed result in ansible-playbook's
    output."""
    hits, task = [], None
    for line in out.splitlines():
        if m := re.match(r"(?:TASK|RUNNING HANDLER) \[(.+?)\]", line):
            task = m.group(1)
        elif m := re.match(r"(changed|fatal|failed): \[([^\]\s]+)", line):
            hits.append((task, m.group(1), m.group(2), line))
    return hits


def _changed_tasks(out: str) -> str:
    """The tasks that reported changed (or failed) and on which hosts, as text for a failure message."""
    return "\n".join(f"{task}: {line[:200]}" for task, _, _, line in _task_results(out)[:40])


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


def _units(running: dict[str, str], prefix: str) -> dict[str, str]:
    """The running units (-> main PID) whose names start with ``prefix``."""
    return {u: pid for u, pid in running.items() if u.startswith(prefix)}


# What names every node, so the old nodes must rewrite it when one joins (and nothing else: on them the
# growth run is a real re-run of site.yml, which otherwise changes nothing).
NODE_LIST_TASKS = {
    "nat_gateway : Write the NAT and port forward rules and their jumps from the built-in chains (scalelab's own chains)",
    "public_firewall : Write the public firewall rules (scalelab's own chains; IPv6 too when it is filtered)",
    "iptables_loader : Apply scalelab firewall",
    "hosts : Map every node's name to its private address",
    "ssh_mesh : Trust every node's host keys, by name and by private address",
    "ssh_mesh : Authorize every node's user key",
    "hadoop : Write the directories, configuration, units and PATH",
    "hadoop : Restart the running Hadoop daemons",
    "torchrun : Install the launcher and the all_reduce check",
}


def _changed_by_host(out: str) -> dict[str, set[str]]:
    """host -> the tasks (and handlers) that reported changed on it."""
    hits: dict[str, set[str]] = {}
    for task, status, host, _ in _task_results(out):
        if status == "changed":
            hits.setdefault(host, set()).add(task)
    return hits


def test_growing_the_cluster_by_one_worker(fresh_lab) -> None:
    """`fab lab-add-worker` (and its port forward), provision: the new node is in /etc/hosts, the SSH mesh,
    the master's forwards and Ray everywhere.  On the others, whose second site.yml run this is, only
    what names every node changed (the rest is idempotent, in a real run), Ray and YARN kept running,
    HDFS, whose hdfs-site.xml changed, restarted and kept its data: the NameNode was not formatted again (same
    cluster and namespace ids) and a file written before is still there."""
    old = [h.name for h in fresh_lab.spec.hosts]
    cl = _inventory.load(fresh_lab.inventory)
    ids_before = cl.ssh(cl.master, NAME_VERSION, root=True).stdout
    put = cl.ssh(cl.master, f"echo kept | ({HDFS} dfs -put -f - /data/provision_e2e.txt)", root=True, check=False)
    assert put.returncode == 0, put.stderr[-1500:]
    before = {h: daemons(fresh_lab.spec, h) for h in old}
    assert all(_units(before[h], "ray-") and _units(before[h], "hadoop-") for h in old), before
    proc = fresh_lab.grow()
    new = fresh_lab.spec.hosts[-1].name
    assert new not in old and new in (fresh_lab.inventory / "hosts.yml").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    changed = _changed_by_host(proc.stdout)
    for h in old:
        assert "hosts : Map every node's name to its private address" in changed.get(h, set()), (h, changed.get(h))
        assert changed[h] <= NODE_LIST_TASKS, \
            f"{h}: a re-run changed more than what names the new node: {sorted(changed[h] - NODE_LIST_TASKS)}"
    after = {h: daemons(fresh_lab.spec, h) for h in old}
    for h in old:
        assert _units(after[h], "ray-") == _units(before[h], "ray-"), \
            f"{h}: Ray was restarted on a node already in the cluster: {before[h]} -> {after[h]}"
        # Hadoop's files on the old nodes did change (workers names the new node, which no daemon reads;
        # hdfs-site.xml's dfs.replication 2 -> 3): the handler restarts HDFS's daemons, which read it, and
        # leaves YARN's running (a new NodeManager registers with the ResourceManager by itself).
        assert set(_units(after[h], "hadoop-")) == set(_units(before[h], "hadoop-")), (h, before[h], after[h])
        for unit, pid in _units(after[h], "hadoop-").items():
            hdfs = unit in ("hadoop-namenode.service", "hadoop-datanode.service")
            assert (pid != before[h][unit]) == hdfs, \
                f"{h}: {unit} {'not ' if hdfs else ''}restarted after hdfs-site.xml changed: " \
                f"{before[h]} -> {after[h]}"
    ids = [re.findall(r"^(clusterID|namespaceID)=(.*)$", v, re.M)
           for v in (ids_before, cl.ssh(cl.master, NAME_VERSION, root=True).stdout)]
    assert len(ids[0]) == 2 and ids[0] == ids[1], ids
    cat = cl.ssh(cl.master, f"{HDFS} dfs -cat /data/provision_e2e.txt", root=True, check=False)
    assert cat.stdout.strip() == "kept", cat.stderr[-1500:]
    out = fresh_lab.infra("tests/infra/test_base.py", k="hosts or mesh or nat or forward")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    n = len(fresh_lab.spec.hosts)
    status = fab("status", "--inventory", str(fresh_lab.inventory), check=False)
    assert f"ray: {n}/{n} nodes alive" in status.stdout, status.stdout + status.stderr


def test_a_further_run_in_check_mode_changes_nothing(fresh_lab) -> None:
    """`ansible-playbook site.yml --check` on the grown cluster (the new node provisioned once, the
    others twice): no task fails in check mode and none would change, on any node."""
    t0 = time.monotonic()
    proc, rc = fresh_lab.playbook("--check", timeout=900)
    fresh_lab.timings["check"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {h.name for h in fresh_lab.spec.hosts} <= set(rc), rc
    changed = {h: v["changed"] for h, v in rc.items() if v["changed"] or v["failed"]}
    assert not changed, f"--check would change something: {changed}:\n{_changed_tasks(proc.stdout)}"
