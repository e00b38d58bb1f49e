"""HDFS and YARN on the provisioned lab (`plab`, tests/e2e/conftest.py), beyond testinfra's checks
(units, private-only ports, dfsadmin report, yarn node list: tests/infra/test_services.py):

- a YARN application (distributed shell, one container per node) runs to success;
- PageRank and k-means read their input from HDFS on every node and give what the local read gives;
- a worker's power cut (replication 2) does not stop reads, and booted again the node rejoins every
  layer: Ray, HDFS, the base (routes, /etc/hosts);
- the NameNode's host power-cut and booted again keeps the data and its NAT and forwards (a second
  provision keeping the data is checked by tests/e2e/test_provision.py's growth run).

The lab runs the Hadoop runtime built from Maven Central (roles/hadoop/files/dist/build.sh).
"""
from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from scalelab import runner
from tests.e2e.labutil import fab, live_ray_node_ids, wait_ray_whole

pytestmark = pytest.mark.lab

PROFILE = ". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh; "
CUT_FILE = "/data/cut_e2e.csv"   # written once, read after every fault
VENV_PY = "/opt/scalelab/venv/bin/python"


def hadoop(cl, node, command: str, timeout: float = 300):
    """`command` (hdfs ... or yarn ..., from $HADOOP_HOME/bin) as the hadoop user on a node."""
    return cl.ssh(node, PROFILE + f"cd /tmp && sudo -n -E -u hadoop $HADOOP_HOME/bin/{command}", timeout=timeout,
                  check=False, root=True)


def webhdfs_sha256(cl, node, path: str) -> str:
    """sha256 of an HDFS file read on `node` through workloads.graphio's WebHDFS reader (whole file)."""
    code = ("import hashlib, sys; from workloads.graphio import open_fs; fs, p = open_fs(sys.argv[1]); "
            "f = fs.open_input_file(p); print(hashlib.sha256(bytes(f.read_at(f.size(), 0))).hexdigest())")
    uri = f"hdfs://{cl.master.name}:9000{path}"
    r = cl.ssh(node, f"cd /opt/scalelab/src && {VENV_PY} -c {shlex.quote(code)} {uri}", timeout=300, check=False)
    assert r.returncode == 0, f"{node}: {r.stderr[-1500:]}"
    return r.stdout.strip()


def wait_hdfs_complete(cl, timeout: float = 240) -> float:
    """Seconds until every DataNode is live and safemode is off."""
    t0 = time.monotonic()
    while True:
        hdfs = _cluster.services(cl)["hdfs"]
        if hdfs["ok"]:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"HDFS not complete after {timeout:.0f} s: {hdfs['line']}"
        time.sleep(3)


@pytest.fixture(scope="module")
def cl(plab):
    c = _inventory.load(plab.inventory)
    assert _cluster.hdfs_running(c), "the NameNode is not running on the lab (the lab runs Hadoop by default)"
    return c


@pytest.fixture(scope="module")
def cut_file(cl) -> str:
    """A ~2.6 MB edge list in HDFS with 1 MiB blocks and replication 2: every node holds some blocks,
    no block is on every node.  Returns its sha256."""
    gen = ("seq 1 200000 | awk '{print $1\",\"($1*7)%1000}' > /tmp/cut_e2e.csv && sha256sum /tmp/cut_e2e.csv "
           "&& chmod 644 /tmp/cut_e2e.csv")
    r = cl.ssh(cl.master, gen, root=True)
    digest = r.stdout.split()[0]
    put = hadoop(cl, cl.master, f"hdfs dfs -D dfs.replication=2 -D dfs.blocksize=1048576 -put -f /tmp/cut_e2e.csv {CUT_FILE}")
    assert put.returncode == 0, put.stderr[-2000:]
    return digest


def test_yarn_distributed_shell_runs_on_every_node(cl, plab) -> None:
    n = len(cl.nodes)
    jar = "$(ls $HADOOP_HOME/share/hadoop/yarn/hadoop-yarn-applications-distributedshell-*.jar)"
    t0 = time.monotonic()
    r = hadoop(cl, cl.master, f"yarn org.apache.hadoop.yarn.applications.distributedshell.Client -jar {jar} "
                              f"-shell_command hostname -num_containers {n} -master_memory 256 "
                              "-container_memory 128 -timeout 300000", timeout=420)
    plab.timings["yarn_app"] = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Application completed successfully" in out, out[-3000:]
    app = hadoop(cl, cl.master, "yarn application -list -appStates FINISHED")
    assert "SUCCEEDED" in app.stdout and "DistributedShell" in app.stdout, app.stdout[-2000:] + app.stderr[-1000:]


@pytest.mark.parametrize("workload", ["pagerank", "kmeans"])
def test_hdfs_read_equals_local_read(cl, plab, tmp_path, workload) -> None:
    """`put-data` puts the dataset into HDFS /data too; the same run with --input hdfs://... (each
    worker on every node reads its byte range over WebHDFS) gives the local read's result."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "hdfs_e2e.csv").write_text("node1,node2\n" + "".join(f"{i},{(i * 7) % 101}\n" for i in range(3000)))
    out = _cluster.put_data(plab.inventory, "hdfs_e2e", say=lambda m: None, data_dir=data)
    assert out["hdfs_uri"] == f"hdfs://{cl.master.name}:9000/data/hdfs_e2e.csv"
    n = len(cl.nodes)
    results = {}
    for source, extra in (("local", []), ("hdfs", ["--input", out["hdfs_uri"]])):
        [path] = runner.run_experiment(cl, workload, n, "ray", "hdfs_e2e", 1, extra + ["--verify"],
                                       timeout_s=600, say=lambda m: None, results_dir=tmp_path / source)
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["verification"]["passed"], rec
        assert rec["dataset"]["uri"] == (out["hdfs_uri"] if source == "hdfs" else out["uri"].removeprefix("file://"))
        # what was computed, not what it took (timings and memory peaks differ from run to run)
        results[source] = {k: v for k, v in rec["metrics"].items()
                           if not re.search(r"_s($|_)", k) and k != "peak_rss_gib"}
    assert results["hdfs"] == results["local"]


def test_image_tree_in_hdfs_loads_as_the_local_tree(cl) -> None:
    """The learning workloads' ImageFolder reader lists and reads an hdfs:// tree over WebHDFS (no
    libhdfs on the nodes): the same files, labels and decoded pixels as the local copy."""
    make = ("from pathlib import Path; from workloads import vision; print(vision.synthetic_pneumonia("
            "Path('/tmp/xray_e2e_cache'), size=48, counts={'train': (3, 2), 'val': (2, 2), 'test': (2, 1)}))")
    made = cl.ssh(cl.master, f"cd /opt/scalelab/src && {VENV_PY} -c {shlex.quote(make)} && chmod -R a+rX /tmp/xray_e2e_cache",
                  timeout=120, check=False)
    assert made.returncode == 0, made.stderr[-1500:]
    local = made.stdout.strip().splitlines()[-1]
    hadoop(cl, cl.master, "hdfs dfs -rm -r -f -skipTrash /data/xray_e2e")
    put = hadoop(cl, cl.master, f"hdfs dfs -put {local} /data/xray_e2e")   # one command per call: as hadoop
    assert put.returncode == 0, put.stderr[-2000:]
    compare = ("import sys, numpy as np; from workloads import pneumonia; "
               "a, b = (pneumonia.load_data(u, 32) for u in sys.argv[1:]); "
               "assert set(a) == set(b) == {'train', 'val', 'test'}; "
               "[(np.testing.assert_array_equal(a[s].images, b[s].images), "
               "np.testing.assert_array_equal(a[s].labels, b[s].labels), "
               "print(s, len(b[s]), [f.rsplit('/', 2)[-2:] for f in a[s].files] == "
               "[f.rsplit('/', 2)[-2:] for f in b[s].files])) for s in sorted(a)]")
    uri = f"hdfs://{cl.master.name}:9000/data/xray_e2e"
    r = cl.ssh(cl.master, f"cd /opt/scalelab/src && {VENV_PY} -c {shlex.quote(compare)} {local} {uri}",
               timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["test", "3", "True", "train", "5", "True", "val", "4", "True"], r.stdout


def test_fab_status_reads_hdfs_and_yarn_from_their_json_and_fails_without_the_namenode(cl, plab) -> None:
    """`fab status` reads the NameNode's JMX and the ResourceManager's REST metrics on the master; with
    HDFS enabled and the NameNode stopped it names it and exits non-zero (text and --json alike)."""
    inv, n = str(plab.inventory), len(cl.nodes)
    wait_hdfs_complete(cl)
    st = json.loads(fab("status", "--inventory", inv, "--json").stdout)
    assert st["hdfs"]["live"] == n and st["hdfs"]["safemode"] is False and st["hdfs"]["capacity_bytes"] > 0, st
    assert st["yarn"]["active"] == n and st["yarn"]["vcores"] > 0, st
    cl.ssh(cl.master, "systemctl stop hadoop-namenode", root=True)
    try:
        proc = fab("status", "--inventory", inv, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"hdfs: the NameNode is not running on {cl.master.name} (inactive)" in proc.stdout, proc.stdout
        js = fab("status", "--inventory", inv, "--json", check=False)
        st = json.loads(js.stdout)
        assert js.returncode == 1 and st["ok"] is False and st["hdfs"]["ok"] is False, js.stdout
        assert st["yarn"]["ok"] is True and st["ray"]["ok"] is True, js.stdout   # only HDFS is named
    finally:
        cl.ssh(cl.master, "systemctl start hadoop-namenode", root=True)
    wait_hdfs_complete(cl, timeout=240)


def _datanode_registered(cl, node: str) -> bool:
    """Whether the DataNode on ``node`` has registered with the NameNode and heartbeats to it (its JMX)."""
    ip = cl.node(node).private_ip
    url = f"http://{ip}:9864/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo"
    jmx = f"python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' '{url}'"
    r = cl.ssh(node, jmx, timeout=30, check=False)
    if r.returncode != 0:
        return False
    actors = json.loads(json.loads(r.stdout)["beans"][0].get("BPServiceActorInfo", "[]"))
    return bool(actors) and all(a.get("ActorState") == "RUNNING" for a in actors)


def _base_holds(plab) -> None:
    """The base layer (routes, /etc/hosts, the master's NAT and forwards) as testinfra checks it."""
    out = plab.infra("tests/infra/test_base.py", k="route or hosts or nat or forward")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_a_worker_power_cut_keeps_hdfs_reads_and_the_node_rejoins_every_layer(cl, plab, cut_file) -> None:
    """worker1 power-cut: HDFS reads go on (WebHDFS and Hadoop's client skip the dead DataNode); booted
    again, it is back in Ray within 60 s, its DataNode registers again, and the base layer holds."""
    assert webhdfs_sha256(cl, "worker2", CUT_FILE) == cut_file
    inv, ip = str(plab.inventory), cl.node("worker1").private_ip
    wait_ray_whole(plab.inventory)   # an earlier fault may still be settling
    old_ids = live_ray_node_ids(cl, ip)
    assert len(old_ids) == 1, old_ids
    fab("lab-kill", "worker1", "--inventory", inv)
    try:
        t0 = time.monotonic()
        assert webhdfs_sha256(cl, cl.master.name, CUT_FILE) == cut_file   # WebHDFS, skipping the dead node
        plab.timings["read_with_dn_down"] = time.monotonic() - t0
        cat = hadoop(cl, "worker2", f"hdfs dfs -cat {CUT_FILE} | sha256sum")   # Hadoop's own client too
        assert cat.returncode == 0 and cat.stdout.split()[0] == cut_file, cat.stderr[-1500:]
    finally:
        fab("lab-start", "worker1", "--inventory", inv)
    t0 = time.monotonic()
    back: dict[str, float] = {}
    while len(back) < 2:   # the booted node's ray-worker and DataNode are new processes that join by themselves
        elapsed = time.monotonic() - t0
        if "ray" not in back and live_ray_node_ids(cl, ip) - old_ids:   # a new node, not the old entry
            back["ray"] = elapsed
        if "hdfs" not in back and _datanode_registered(cl, "worker1"):
            back["hdfs"] = elapsed
        assert "ray" in back or elapsed < 60, f"worker1 not back in ray.nodes() 60 s after boot (alive there: " \
                                              f"{live_ray_node_ids(cl, ip)}, before the cut: {old_ids})"
        assert "hdfs" in back or elapsed < 180, "the DataNode on worker1 did not rejoin within 180 s"
        time.sleep(2)
    plab.timings["ray_rejoin"], plab.timings["dn_rejoin"] = back["ray"], back["hdfs"]
    wait_hdfs_complete(cl)
    assert webhdfs_sha256(cl, "worker1", CUT_FILE) == cut_file
    _base_holds(plab)


def test_namenode_host_power_cut_keeps_the_data(cl, plab, cut_file) -> None:
    """The master power-cut and booted again: HDFS comes back with the data, and the base layer (the
    master's NAT and forwards, loaded at boot) holds."""
    inv = str(plab.inventory)
    fab("lab-kill", cl.master.name, "--inventory", inv)
    fab("lab-start", cl.master.name, "--inventory", inv)
    plab.timings["hdfs_back_after_master_cut"] = wait_hdfs_complete(cl, timeout=300)
    assert webhdfs_sha256(cl, "worker2", CUT_FILE) == cut_file
    cat = hadoop(cl, cl.master, f"hdfs dfs -cat {CUT_FILE} | sha256sum")
    assert cat.returncode == 0 and cat.stdout.split()[0] == cut_file, cat.stderr[-1500:]
    _base_holds(plab)
