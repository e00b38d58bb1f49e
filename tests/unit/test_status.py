"""`fab status` from Ray's, the NameNode's and the ResourceManager's own JSON: parsing real answers.

The fixtures in tests/unit/fixtures/status/ are the output of :func:`scalelab.cluster.status_command`
captured on a 3-host lab (master 10.111.1.1, worker1 .2, worker2 .3; Ray 2.60, Hadoop 3.4.2) on
2026-12-01; see tests/unit/fixtures/status/README.md for how each state was produced.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalelab import cluster
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node

FIXTURES = Path(__file__).parent / "fixtures" / "status"


def lab(tmp_path: Path, hadoop_enabled: bool = True) -> Cluster:
    v = {"ansible_user": "root"}
    nodes = (Node("master", "masters", "10.111.0.10", "10.111.1.1", v),
             Node("worker1", "workers", "10.111.1.2", "10.111.1.2", v),
             Node("worker2", "workers", "10.111.1.3", "10.111.1.3", v))
    return Cluster(tmp_path, nodes, {"hadoop_enabled": hadoop_enabled})


def states(tmp_path: Path, name: str, **kw) -> dict:
    return cluster.service_states(lab(tmp_path, **kw), cluster.parse_status_output((FIXTURES / name).read_text()))


def test_healthy_lab(tmp_path) -> None:
    st = states(tmp_path, "healthy.txt")
    assert [st[k]["line"] for k in ("ray", "hdfs", "yarn")] == [
        "ray: 3/3 nodes alive, 6 CPUs",
        "hdfs: 3/3 DataNodes live, safemode off, capacity 811.7 GB",
        "yarn: 3/3 NodeManagers active, 6 vcores, 24576 MB"]
    assert all(s["ok"] for s in st.values())
    assert st["hdfs"]["missing"] == [] and st["ray"]["missing"] == []


def test_ray_names_the_nodes_that_have_not_joined(tmp_path) -> None:
    """Provisioning, before the workers' raylets joined: only the head in ray.nodes()."""
    st = states(tmp_path, "ray-workers-joining.txt")
    assert not st["ray"]["ok"] and st["ray"]["alive"] == 1 and st["ray"]["missing"] == ["worker1", "worker2"]
    assert st["ray"]["line"].startswith("ray: 1/3 nodes alive, 2 CPUs (worker1, worker2 not alive")
    assert st["hdfs"]["ok"] and st["yarn"]["ok"]


def test_a_power_cut_worker_is_dead_in_ray(tmp_path) -> None:
    """worker2's power cut: Ray keeps its entry, Alive false; it is named, the rest still counts."""
    text = (FIXTURES / "worker2-power-cut.txt").read_text()
    nodes = json.loads(cluster.parse_status_output(text)["ray"])
    assert any(not n["Alive"] and n["NodeManagerAddress"] == "10.111.1.3" for n in nodes)
    st = states(tmp_path, "worker2-power-cut.txt")
    assert not st["ray"]["ok"] and st["ray"]["missing"] == ["worker2"] and st["ray"]["alive"] == 2
    assert st["ray"]["line"] == ("ray: 2/3 nodes alive, 4 CPUs (worker2 not alive: see `journalctl -u ray-worker` "
                                 "there)")
    # the NameNode (restarted just before) has not seen worker2's DataNode: named too
    assert not st["hdfs"]["ok"] and st["hdfs"]["missing"] == ["worker2"] and st["hdfs"]["live"] == 2


def test_namenode_stopped_is_a_failure_line(tmp_path) -> None:
    st = states(tmp_path, "namenode-stopped.txt")
    assert not st["hdfs"]["ok"] and "Connection refused" in st["hdfs"]["error"]
    assert st["hdfs"]["line"] == ("hdfs: the NameNode is not running on master (inactive): see `journalctl -u "
                                  "hadoop-namenode` there, then `fab provision --tags hadoop`")
    assert st["yarn"]["ok"] and st["ray"]["ok"]    # only HDFS is named


def test_hadoop_not_enabled_is_not_a_failure(tmp_path) -> None:
    """The same answers (nothing listening) on a cluster with hadoop_enabled false: not a failure."""
    text = (FIXTURES / "namenode-stopped.txt").read_text().replace("hadoop-resourcemanager=active",
                                                                  "hadoop-resourcemanager=inactive")
    text = "\n".join(ln for ln in text.splitlines() if ":8088/" not in ln)   # and no RM answer at all
    st = cluster.service_states(lab(tmp_path, hadoop_enabled=False), cluster.parse_status_output(text))
    assert st["hdfs"]["ok"] and st["hdfs"]["line"].startswith("hdfs: not enabled")
    assert st["yarn"]["ok"] and st["yarn"]["line"].startswith("yarn: not enabled")


def test_a_running_namenode_that_does_not_answer_is_a_failure(tmp_path) -> None:
    text = (FIXTURES / "namenode-stopped.txt").read_text().replace("hadoop-namenode=inactive",
                                                                  "hadoop-namenode=active")
    st = cluster.service_states(lab(tmp_path), cluster.parse_status_output(text))
    assert not st["hdfs"]["ok"] and "does not answer (URLError" in st["hdfs"]["line"]


def test_an_unhealthy_nodemanager_is_named_with_its_health_report(tmp_path) -> None:
    """worker1's NodeManager with a disk limit below its disk's use: YARN counts it unhealthy and its
    report says why; `fab status` names the node and prints the report."""
    st = states(tmp_path, "nodemanager-unhealthy.txt")
    yarn = st["yarn"]
    assert not yarn["ok"] and (yarn["active"], yarn["unhealthy"]) == (2, 1)
    assert yarn["health_reports"] == {"worker1": (
        "1/1 local-dirs usable space is below configured utilization percentage/no more usable space "
        "[ /var/lib/hadoop/yarn/local : used space above threshold of 10.0% ] ; 1/1 log-dirs usable space is "
        "below configured utilization percentage/no more usable space [ /var/log/hadoop/userlogs : used space "
        "above threshold of 10.0% ]")}
    assert yarn["line"].startswith("yarn: 2/3 NodeManagers active, 4 vcores, 16384 MB, 1 unhealthy (worker1: 1/1 "
                                   "local-dirs usable space is below")
    assert yarn["line"].endswith("threshold of 10.0% ]): fix what it says (a disk above the threshold: free space on it)")
    assert st["ray"]["ok"] and st["hdfs"]["ok"]


def test_health_reports_name_the_inventorys_hosts(tmp_path) -> None:
    """YARN names a NodeManager by host name or by address; neither known: YARN's name is kept."""
    expected = {n.private_ip: n.name for n in lab(tmp_path).nodes}
    answer = {"body": {"nodes": {"node": [{"nodeHostName": "10.111.1.3", "healthReport": "disk\n full "},
                                          {"nodeHostName": "snf-1234", "healthReport": ""}]}}}
    assert cluster.unhealthy_reports(answer, expected) == {"worker2": "disk full", "snf-1234": "no report"}
    # the ResourceManager's answer with no unhealthy NodeManager (captured on the lab), and none at all
    assert cluster.unhealthy_reports({"body": {"nodes": {}}}, expected) == {}
    assert cluster.unhealthy_reports(None, expected) == {}


@pytest.mark.parametrize("text", ["", "@ray\nTraceback (most recent call last):\nConnectionError: boom\n"])
def test_no_answer_from_ray_is_a_failure(tmp_path, text) -> None:
    st = cluster.service_states(lab(tmp_path), cluster.parse_status_output(text))
    assert not st["ray"]["ok"] and st["ray"]["line"].startswith("ray: not answering on master")
    assert not st["hdfs"]["ok"] and "not running on master (unknown)" in st["hdfs"]["line"]


def test_safemode_and_a_missing_datanode_are_failures(tmp_path) -> None:
    """The healthy NameNode beans with safemode on and worker1 gone from LiveNodes."""
    out = cluster.parse_status_output((FIXTURES / "healthy.txt").read_text())
    urls = cluster.service_urls(lab(tmp_path))
    state = out["web"][urls["fsnamesystem"]]["body"]["beans"][0]
    info = out["web"][urls["namenodeinfo"]]["body"]["beans"][0]
    state.update(FSState="safeMode", NumLiveDataNodes=2)
    live = json.loads(info["LiveNodes"])
    del live["10.111.1.2:9866"]
    info["LiveNodes"] = json.dumps(live)
    st = cluster.service_states(lab(tmp_path), out)["hdfs"]
    assert not st["ok"] and st["line"].startswith("hdfs: 2/3 DataNodes live, safemode ON") and "worker1 not live" in st["line"]


def test_status_command_queries_the_private_address_on_the_master(tmp_path) -> None:
    c = lab(tmp_path)
    cmd = cluster.status_command(c)
    assert "http://10.111.1.1:9870/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState" in cmd
    assert "http://10.111.1.1:8088/ws/v1/cluster/metrics" in cmd
    assert "http://10.111.1.1:8088/ws/v1/cluster/nodes?states=UNHEALTHY" in cmd
    assert "set -a; . /etc/scalelab/ray.env" in cmd and "ray.nodes()" in cmd


# ---------------------------------------------------------------- a run's check of Ray's live nodes
def test_the_gcs_list_of_live_nodes_leaves_the_dead_out() -> None:
    line = cluster.parse_status_output((FIXTURES / "worker2-power-cut.txt").read_text())["ray"]
    assert cluster.live_ray_nodes(line) == {"10.111.1.1": 2.0, "10.111.1.2": 2.0}
    assert cluster.live_ray_nodes("ConnectionError: could not find any running Ray instance") is None
    assert cluster.live_ray_nodes('{"not": "a list"}') is None


def _preflight(monkeypatch, tmp_path, dashboard: str, gcs_fixture: str | None):
    """A Ray run's preflight on the 3-host lab whose every other check passes; the head dashboard's view
    (the probe's line) is ``dashboard``, the GCS's is a captured `fab status` answer (None: no answer)."""
    from scalelab import provenance, runner

    cl = lab(tmp_path)
    facts = {"lock": "0", "units": "", "code": provenance.code_hash(), "cpus": "2", "dataset": "1", "ray": dashboard}
    monkeypatch.setattr(runner._prov, "probe", lambda c, nodes, **kw: {n.name: dict(facts) for n in nodes})
    gcs = None if gcs_fixture is None else cluster.parse_status_output((FIXTURES / gcs_fixture).read_text())["ray"]
    asked = []
    monkeypatch.setattr(runner, "gcs_live_nodes", lambda c: asked.append(c) or (gcs and cluster.live_ray_nodes(gcs)))
    return lambda: runner.preflight(cl, runner.workload("pagerank"), ["ray"], cl.nodes, "tiny"), asked


def test_a_run_asks_the_gcs_where_the_dashboard_has_not_seen_a_node(monkeypatch, tmp_path) -> None:
    """After a restart of Ray's head the dashboard's node list missed both workers for minutes while the
    GCS had them (the lab, 2026-12-05): the run goes on by the GCS's list."""
    head_only = json.dumps([["10.111.1.1", 2.0]])
    check, asked = _preflight(monkeypatch, tmp_path, head_only, "healthy.txt")
    assert check()[0] == 2 and len(asked) == 1
    # a worker the GCS has not got either is refused, named
    check, _ = _preflight(monkeypatch, tmp_path, head_only, "worker2-power-cut.txt")
    with pytest.raises(UserError, match=r"Ray has 2 live node\(s\); worker2 not among them"):
        check()


def test_a_run_asks_the_gcs_only_where_the_dashboard_lacks_a_node(monkeypatch, tmp_path) -> None:
    every = json.dumps([["10.111.1.1", 2.0], ["10.111.1.2", 2.0], ["10.111.1.3", 2.0]])
    check, asked = _preflight(monkeypatch, tmp_path, every, None)
    assert check()[0] == 2 and asked == []


def test_ray_not_answering_at_all_is_one_line(monkeypatch, tmp_path) -> None:
    check, asked = _preflight(monkeypatch, tmp_path, "urllib.error.URLError: <urlopen error [Errno 111]>", None)
    with pytest.raises(UserError, match=r"^Ray is not answering on master \(urllib.error.URLError"):
        check()
    assert len(asked) == 1
