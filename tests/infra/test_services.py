"""testinfra checks of the cluster services: shared storage, Java, Hadoop, the Python environment, Ray, torchrun.

    .venv/bin/pytest tests/infra/test_services.py --hosts=ansible://all --ansible-inventory=inventory/lab

The Hadoop daemons run wherever hadoop_enabled is true (the lab: a runtime built from Maven Central, see
inventory/lab/group_vars/all/hadoop.yml); an inventory that turns Hadoop off skips their checks with
that reason, and only the configuration and unit files are checked.
"""
from __future__ import annotations

import json
import os
import re
import threading
import xml.etree.ElementTree as ET

import pytest

from workloads.comm import RayComm

VENV = "/opt/scalelab/venv"
RAY_ENV = "/etc/scalelab/ray.env"
TOKEN = "/etc/scalelab/ray_auth_token"
LAUNCHER = "/usr/local/bin/scalelab-torchrun"
SHARED = "/srv/scalelab/shared"
HADOOP_CONF = "/etc/hadoop"
HADOOP_HOME = "/opt/hadoop"
# Ray 2.60 ports (roles/ray/defaults/main.yml): every one pinned.
RAY_PORTS = {6379, 6380, 6381, 6382, 6383, 6384, 6385, 6386, 6387, 8265, 10001}
RAY_WORKER_PORTS = range(10002, 11000)


# Every port the hadoop role binds (roles/hadoop/defaults/main.yml): master-only ones, then every node's.
HADOOP_MASTER_PORTS = [9000, 9870, 8032, 8030, 8031, 8033, 8088]
HADOOP_NODE_PORTS = [9866, 9864, 9867, 8041, 8040, 8042]
HADOOP_ENV = ". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh;"


def _need_hdfs(host, cluster):
    enabled = str(cluster.hostvars[cluster.master].get("hadoop_enabled", True)).lower() in ("true", "1", "yes")
    if not enabled:
        pytest.skip("hadoop_enabled is false in this inventory: no Hadoop daemons to check")
    assert host.file(f"{HADOOP_HOME}/bin/hdfs").exists, f"{HADOOP_HOME}/bin/hdfs missing: provision again"


def _as_hadoop(host, command: str):
    return host.run(f"{HADOOP_ENV} sudo -E -u hadoop {command}")


def _props(host, name: str) -> dict[str, str]:
    text = host.file(f"{HADOOP_CONF}/{name}").content_string
    root = ET.fromstring(text.encode())
    return {p.findtext("name"): p.findtext("value") for p in root.findall("property")}


# --- Shared storage (Ray's storage_path) -------------------------------------------------------------

def test_shared_dir_is_the_masters_on_every_node(host, name, cluster):
    """The master holds the directory; every other node mounts it with sshfs as the cluster user."""
    marker = host.file(f"{SHARED}/.scalelab-shared")
    assert marker.exists and marker.content_string.strip() == cluster.master
    mount = host.mount_point(SHARED) if name != cluster.master else None
    if name == cluster.master:
        assert host.file(SHARED).user == cluster.cluster_user
    else:
        assert mount.exists and mount.filesystem == "fuse.sshfs"
        assert {"nosuid", "nodev"} <= set(mount.options), mount.options   # data only: no devices, no setuid
        assert mount.device == f"{cluster.cluster_user}@{cluster.private_ip(cluster.master)}:{SHARED}"
        assert host.file(SHARED).user == cluster.cluster_user
        # the FUSE daemon and its ssh run as the cluster user: nothing of the share runs as root
        procs = [(p.comm, p.user) for comm in ("sshfs", "ssh") for p in host.process.filter(comm=comm)
                 if comm == "sshfs" or SHARED in p.args or "sftp" in p.args]
        assert ("sshfs", cluster.cluster_user) in procs, procs
        assert {user for _comm, user in procs} == {cluster.cluster_user}, procs


def test_shared_dir_write_on_a_worker_is_seen_on_the_master(cluster):
    """A file the cluster user writes on each worker is on the master, same bytes, same owner."""
    for worker in cluster.workers:
        path = f"{SHARED}/infra-check-{worker}"
        w = cluster.ssh(worker, f"sudo -u {cluster.cluster_user} sh -c 'echo from-{worker} > {path}'")
        assert w.returncode == 0, w.stderr
        try:
            r = cluster.ssh(cluster.master, f"stat -c %U {path} && cat {path}")
            assert r.returncode == 0, r.stderr
            assert r.stdout.split() == [cluster.cluster_user, f"from-{worker}"]
        finally:
            cluster.ssh(cluster.master, f"rm -f {path}")


# --- Java --------------------------------------------------------------------------------------------

def test_java_runs(host):
    r = host.run("java -version")
    assert r.rc == 0, r.stderr
    assert "openjdk" in (r.stderr + r.stdout).lower()
    home = re.search(r"^JAVA_HOME=(\S+)", host.file("/etc/environment").content_string, re.M)
    assert home and host.file(f"{home.group(1)}/bin/java").exists


# --- Hadoop configuration (always) -----------------------------------------------------------------------

def test_hadoop_site_files(host, cluster, name):
    core, hdfs = _props(host, "core-site.xml"), _props(host, "hdfs-site.xml")
    yarn, mapred = _props(host, "yarn-site.xml"), _props(host, "mapred-site.xml")
    ip = cluster.private_ip(name)
    assert core["fs.defaultFS"] == f"hdfs://{cluster.master}:9000"
    assert hdfs["dfs.replication"] == str(min(len(cluster.nodes), 3))
    for key in ("dfs.namenode.name.dir", "dfs.datanode.data.dir"):
        assert hdfs[key].startswith("file:///var/lib/hadoop/"), hdfs[key]
    assert not any(v.startswith(("/tmp", "file:///tmp")) for v in (core["hadoop.tmp.dir"], hdfs["dfs.namenode.name.dir"], hdfs["dfs.datanode.data.dir"]))
    assert hdfs["dfs.datanode.address"] == f"{ip}:9866"
    assert hdfs["dfs.namenode.http-address"] == f"{cluster.private_ip(cluster.master)}:9870"
    assert yarn["yarn.nodemanager.hostname"] == ip
    assert mapred["mapreduce.framework.name"] == "yarn"
    assert host.file(f"{HADOOP_CONF}/workers").content_string.split() == [cluster.private_ip(n) for n in cluster.nodes]
    assert "JAVA_HOME=" in host.file(f"{HADOOP_CONF}/hadoop-env.sh").content_string
    # the master's name resolves to its private address (the hosts role), so fs.defaultFS stays private
    assert host.run(f"getent hosts {cluster.master}").stdout.split()[0] == cluster.private_ip(cluster.master)


def test_hadoop_user_and_dirs(host, name, cluster):
    assert host.user("hadoop").exists
    d = host.file("/var/lib/hadoop/hdfs/data")
    assert d.is_directory and d.user == "hadoop"
    if name == cluster.master:
        assert host.file("/var/lib/hadoop/hdfs/name").is_directory


def _units(name, cluster):
    units = ["hadoop-datanode", "hadoop-nodemanager"]
    if name == cluster.master:
        units += ["hadoop-namenode", "hadoop-resourcemanager"]
    return units


def test_hadoop_unit_files(host, name, cluster):
    for unit in _units(name, cluster):
        f = host.file(f"/etc/systemd/system/{unit}.service")
        assert f.exists, unit
        assert "User=hadoop" in f.content_string


# --- Hadoop daemons (with an archive) ---------------------------------------------------------------------

def test_hadoop_units_enabled_and_running(host, name, cluster):
    _need_hdfs(host, cluster)
    assert host.file(HADOOP_HOME).is_symlink and re.search(r"hadoop-3\.", host.file(HADOOP_HOME).linked_to)
    for unit in _units(name, cluster):
        s = host.service(unit)
        assert s.is_enabled and s.is_running, unit


def test_hadoop_ports_on_the_private_address(host, name, cluster):
    _need_hdfs(host, cluster)
    ip = cluster.private_ip(name)
    ports = HADOOP_NODE_PORTS + (HADOOP_MASTER_PORTS if name == cluster.master else [])
    listening = set(host.socket.get_listening_sockets())   # one `ss` for all the ports
    for port in ports:
        assert f"tcp://{ip}:{port}" in listening, port
        wildcard = {f"tcp://0.0.0.0:{port}", f"tcp://:::{port}"} & listening
        assert not wildcard, wildcard


def _answering(ip, ports):
    """The ports of ports on which ip accepts a TCP connection (from the controller, 2 s each, all at
    once: the firewall drops the others, so each probe that finds nothing waits its whole timeout)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    def accepts(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((ip, port)) == 0

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [port for port, ok in zip(ports, pool.map(accepts, ports), strict=True) if ok]


def test_hadoop_ports_closed_on_the_public_address(cluster):
    """From the controller (the public side), no Hadoop port on the master's public address answers."""
    opened = _answering(cluster.public_ip, HADOOP_MASTER_PORTS + HADOOP_NODE_PORTS + [13562])  # + shuffle
    assert not opened, f"Hadoop ports reachable on the public address {cluster.public_ip}: {opened}"


def test_hdfs_report_every_datanode_live_safemode_off(host, name, cluster):
    if name != cluster.master:
        pytest.skip("runs on the master")
    _need_hdfs(host, cluster)
    report = _as_hadoop(host, f"{HADOOP_HOME}/bin/hdfs dfsadmin -report -live")
    assert report.rc == 0, report.stderr
    assert f"Live datanodes ({len(cluster.nodes)})" in report.stdout
    for n in cluster.nodes:
        assert f"Name: {cluster.private_ip(n)}:9866" in report.stdout, n
    assert "Safe mode is OFF" in _as_hadoop(host, f"{HADOOP_HOME}/bin/hdfs dfsadmin -safemode get").stdout


def test_yarn_lists_every_nodemanager_running(host, name, cluster):
    if name != cluster.master:
        pytest.skip("runs on the master")
    _need_hdfs(host, cluster)
    r = _as_hadoop(host, f"{HADOOP_HOME}/bin/yarn node -list -states RUNNING")
    assert r.rc == 0, r.stderr[-2000:]
    assert f"Total Nodes:{len(cluster.nodes)}" in r.stdout, r.stdout
    rows = [line.split() for line in r.stdout.splitlines()]
    running = {row[0].rsplit(":", 1)[0] for row in rows if len(row) >= 2 and row[1] == "RUNNING"}
    # NodeManagers register by host name (resolved to the private address through /etc/hosts)
    assert running in ({str(n) for n in cluster.nodes}, {cluster.private_ip(n) for n in cluster.nodes}), r.stdout


def test_yarn_rest_app_submission_off(host, name, cluster):
    """Simple authentication lets anyone on the private network act as any user: YARN's REST API
    must not accept applications (configured off, and the ResourceManager refuses one)."""
    assert _props(host, "yarn-site.xml")["yarn.webapp.enable-rest-app-submissions"] == "false"
    if name != cluster.master:
        return
    _need_hdfs(host, cluster)
    rm = f"http://{cluster.private_ip(cluster.master)}:8088/ws/v1/cluster/apps/new-application?user.name=hadoop"
    post = ("import sys, urllib.request, urllib.error\n"
            "try: print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='POST')).status)\n"
            "except urllib.error.HTTPError as e: print(e.code)")
    code = host.run(f"python3 -c \"{post}\" '{rm}'").stdout.strip()
    assert code in ("403", "401"), f"the ResourceManager answered {code} to a REST application request"


# --- Python environment -----------------------------------------------------------------------------------

def test_venv_has_the_lock_and_workloads(host):
    r = host.run(f"{VENV}/bin/python -c 'import ray, torch, workloads; print(ray.__version__, torch.__version__)'")
    assert r.rc == 0, r.stderr
    ray_v, torch_v = r.stdout.split()
    assert ray_v == "2.60.0" and torch_v.endswith("+cpu")
    assert re.fullmatch(r"[0-9a-f]{16}", host.file(f"{VENV}/.scalelab-lock-key").content_string.strip())
    assert not host.file("/var/cache/scalelab/wheelhouse").exists or \
        not host.run("ls /var/cache/scalelab/wheelhouse").stdout.strip()


# The .py files of the venv and the workloads that a graph run imports without a cached bytecode file.
UNCACHED = """
import importlib.util, os, sys
import ray, torch, scipy.sparse, pyarrow.csv, workloads.pagerank, workloads.kmeans
roots = (sys.prefix + os.sep, os.path.dirname(os.path.dirname(workloads.__file__)) + os.sep)
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None) or ""
    if f.endswith(".py") and f.startswith(roots) and not os.path.exists(importlib.util.cache_from_source(f)):
        print(f)
"""


def test_the_runs_imports_have_their_bytecode_cached(host):
    """The venv and the workloads are root's, so no run's process can cache its bytecode there: the
    role's check imports what the runs import as root, leaving it (else every Ray worker and torch rank
    compiles them from source, ~2 CPU s a process)."""
    r = host.run(f"PYTHONDONTWRITEBYTECODE=1 {VENV}/bin/python -c %s", UNCACHED)
    assert r.rc == 0, r.stderr
    missing = r.stdout.split()
    assert not missing, f"{len(missing)} modules compiled at every start, e.g. {missing[:5]}"


# --- Ray ----------------------------------------------------------------------------------------------

def test_ray_unit_active(host, name, cluster):
    unit = "ray-head" if name == cluster.master else "ray-worker"
    s = host.service(unit)
    assert s.is_enabled and s.is_running, unit
    other = "ray-worker" if unit == "ray-head" else "ray-head"
    assert not host.file(f"/etc/systemd/system/{other}.service").exists


def test_ray_workers_run_at_nice_0(host):
    """Ray's worker processes (the `ray::` ones) at the priority torchrun's ranks get, not Ray's 15."""
    assert "RAY_worker_niceness=0" in host.file(RAY_ENV).content_string.splitlines()
    ps = host.run("ps -eo ni=,args= | awk '$2 ~ /^ray::/ {print $1}'")
    assert ps.rc == 0 and set(ps.stdout.split()) <= {"0"}, ps.stdout


def test_ray_runs_with_the_inline_limit_the_workloads_send(host):
    """The running raylet (its workers inherit its environment) passes arrays up to
    RayComm.INLINE_BYTES inside calls: the role's ray.env, and Ray restarted after it changed."""
    want = f"RAY_max_direct_call_object_size={RayComm.INLINE_BYTES}"
    assert want in host.file(RAY_ENV).content_string.splitlines()
    env = host.run("tr '\\0' '\\n' < /proc/$(pgrep -o -x raylet)/environ")
    assert env.rc == 0 and want in env.stdout.splitlines(), env.stderr


def test_ray_token_auth(host, cluster):
    env = host.file(RAY_ENV).content_string
    assert "RAY_AUTH_MODE=token" in env and f"RAY_AUTH_TOKEN_PATH={TOKEN}" in env
    tok = host.file(TOKEN)
    assert tok.mode == 0o640 and tok.user == "root" and tok.group == cluster.cluster_user
    assert re.fullmatch(r"[0-9a-f]{64}", tok.content_string.strip())
    controller_copy = cluster.inventory / "artifacts/ray_auth_token.txt"
    assert controller_copy.read_text().strip() == tok.content_string.strip()


def _ray_listeners(host) -> list[tuple[str, int, str]]:
    """(address, port, process) of every TCP listener of a process in the Ray unit's cgroup (one command)."""
    out = host.run("ss -ltnpH | while read -r _ _ _ local _ procs; do "
                   "for pid in $(echo \"$procs\" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do "
                   "if grep -qE 'ray-(head|worker)\\.service' /proc/$pid/cgroup 2>/dev/null; then "
                   "echo \"$local $(cat /proc/$pid/comm)\"; break; fi; done; done").stdout
    res = []
    for line in out.splitlines():
        local, comm = line.rsplit(" ", 1)
        addr, _, port = local.rpartition(":")
        res.append((addr.strip("[]"), int(port), comm))
    return res


def test_ray_ports_pinned_and_never_public(host, name, cluster):
    listeners = _ray_listeners(host)
    assert listeners, "no Ray listener found"
    public = cluster.hostvars[name].get("scalelab_public_ip")
    ip = cluster.private_ip(name)
    for addr, port, proc in listeners:
        assert port in RAY_PORTS or port in RAY_WORKER_PORTS, f"unpinned Ray port {addr}:{port} ({proc})"
        assert addr != public, f"Ray listens on the public address: {addr}:{port} ({proc})"
        assert addr in (ip, f"::ffff:{ip}", "127.0.0.1", "::ffff:127.0.0.1", "*", "0.0.0.0", "::"), (addr, port)
    bound = {(a, p) for a, p, _ in listeners}
    if name == cluster.master:   # what Ray lets us bind is bound to the private address
        assert (ip, 8265) in bound, "dashboard not on the private address"
        assert not {("0.0.0.0", 8265), ("*", 8265), ("::", 8265)} & bound
        assert any(a.endswith(ip) and p == 10001 for a, p in bound), "client server not on the private address"


@pytest.mark.xfail(strict=True, reason="Ray 2.60's C++ gRPC servers (GCS, raylet, object manager, workers) and "
                   "its Prometheus endpoints always listen on every address; on the master the public firewall "
                   "drops them on the public interface (test_ray_ports_closed_on_the_public_address)")
def test_no_ray_port_on_a_wildcard_address(host):
    wild = [(a, p, n) for a, p, n in _ray_listeners(host) if a in ("*", "0.0.0.0", "::")]
    assert not wild, wild


def test_ray_ports_closed_on_the_public_address(cluster):
    """From the controller (the public side), no Ray port on the master's public address answers."""
    opened = _answering(cluster.public_ip, sorted(RAY_PORTS))
    assert not opened, f"Ray ports reachable on the public address {cluster.public_ip}: {opened}"


RAY_NODES = ("import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
             "print(json.dumps([[n['NodeManagerAddress'], n['Resources'].get('CPU', 0)] for n in ray.nodes() if n['Alive']]))")


def test_ray_lists_every_node_with_the_configured_cpus(host, name, cluster):
    if name != cluster.master:
        pytest.skip("runs on the master")
    r = host.run(f"set -a; . {RAY_ENV}; set +a; {VENV}/bin/python -c \"{RAY_NODES}\"")
    assert r.rc == 0, r.stderr[-2000:]
    alive = dict(json.loads(r.stdout.strip().splitlines()[-1]))
    assert set(alive) == {cluster.private_ip(n) for n in cluster.nodes}
    want = cluster.hostvars[cluster.master].get("ray_num_cpus")
    if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
        assert all(int(c) == int(want) for c in alive.values()), alive
    status = host.run(f"set -a; . {RAY_ENV}; set +a; {VENV}/bin/ray status")
    assert status.rc == 0 and status.stdout.count(" node_") == len(cluster.nodes), status.stdout


# --- torchrun --------------------------------------------------------------------------------------------

def test_torchrun_allreduce_across_every_node(cluster):
    """One launcher command per node, started together; every rank gets 1+2+...+N."""
    n = len(cluster.nodes)
    results: dict[str, object] = {}
    job = f"infra-{os.getpid()}"

    def run(node):
        results[node] = cluster.ssh(node, f"SCALELAB_RDZV_ID={job} {LAUNCHER} /usr/local/lib/scalelab/allreduce_check.py",
                                    timeout=300)
    threads = [threading.Thread(target=run, args=(node,)) for node in cluster.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = n * (n + 1) // 2
    for node, proc in results.items():
        assert proc.returncode == 0, f"{node}: {proc.stderr[-1500:]}"
        assert f"world={n} sum={expected} expected={expected} ok=True" in proc.stdout, proc.stdout
        assert "iface=" + str(cluster.hostvars[node].get("scalelab_private_interface", "eth1")) in proc.stdout
