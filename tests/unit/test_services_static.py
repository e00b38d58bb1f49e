"""Static checks of the cluster-service roles (java, hadoop, python_env, ray, torchrun) and their
controller side (scalelab.wheelhouse, scalelab.cluster).

Templates are rendered by a localhost-only playbook (tests/unit/ansible/render_services.yml) with the
lab's and the okeanos inventory's variables; nothing here contacts a host.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from scalelab import cluster, wheelhouse
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node
from workloads.comm import RayComm

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv/bin"
ROLES = ["java", "hadoop", "python_env", "ray", "torchrun"]
PLAYBOOKS = ["hadoop", "python", "ray", "torch"]
RENDER = ROOT / "tests/unit/ansible/render_services.yml"

needs_ansible = pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs the project venv")


def _env(home: Path) -> dict:
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1", "LANG": "C.UTF-8", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


def _run(args, home: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=_env(home))


def _inventory(dst: Path, group_vars_from: Path) -> Path:
    """hosts.yml shaped like the lab's (master + 2 workers, unreachable) with a real inventory's group_vars."""
    import shutil
    shutil.copytree(group_vars_from, dst / "group_vars")
    unreachable = {"ansible_host": "127.0.0.1", "ansible_port": 9}
    hosts = {"all": {"vars": {"scalelab_private_interface": "eth1"}, "children": {"cluster": {"children": {
        "masters": {"hosts": {"master": {**unreachable, "scalelab_private_ip": "10.9.1.1",
                                        "scalelab_public_ip": "10.9.0.10"}}},
        "workers": {"hosts": {"worker1": {**unreachable, "scalelab_private_ip": "10.9.1.2"},
                              "worker2": {**unreachable, "scalelab_private_ip": "10.9.1.3"}}}}}}}}
    (dst / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return dst


def _render(tmp_path: Path, inventory_src: Path, extra: dict | None = None) -> dict:
    inv = _inventory(tmp_path / "inv", inventory_src / "group_vars")
    out = tmp_path / "rendered.json"
    args = [VENV_BIN / "ansible-playbook", RENDER, "-i", inv, "-e", f"render_out={out}"]
    if extra:
        args += ["-e", json.dumps(extra)]
    r = _run(args, tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


def _props(xml_text: str) -> dict[str, str]:
    root = ET.fromstring(xml_text.split("\n", 1)[1] if xml_text.startswith("<?xml") else xml_text)
    assert root.tag == "configuration"
    return {p.findtext("name"): p.findtext("value") for p in root.findall("property")}


# --- role layout and syntax ------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_role_layout_and_argument_specs(role):
    d = ROOT / "roles" / role
    for sub in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
        assert (d / sub).is_file(), f"{role}: {sub} missing"
    defaults = yaml.safe_load((d / "defaults/main.yml").read_text())
    options = yaml.safe_load((d / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), f"{role}: defaults and argument_specs differ: {set(defaults) ^ set(options)}"
    for name, spec in options.items():
        assert name.startswith(role.split("_")[0] + "_"), f"{role}: {name} lacks the role prefix"
        assert spec.get("description"), f"{role}: {name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{role}: {name} default differs from defaults/main.yml"
    for vars_file in (d / "vars").glob("*.yml") if (d / "vars").exists() else []:
        for name in yaml.safe_load(vars_file.read_text()) or {}:
            assert name.startswith("__"), f"{vars_file}: internal {name} must start with __"


def test_no_wildcard_or_hostkey_shortcuts():
    text = "\n".join(p.read_text() for r in ROLES for p in (ROOT / "roles" / r).rglob("*") if p.is_file())
    assert "0.0.0.0" not in text
    assert "StrictHostKeyChecking=" + "no" not in text and "host_key_checking" not in text


def test_command_tasks_are_idempotent():
    """Every command/shell task says when it changed something (creates:, changed_when:)."""
    for role in ROLES:
        for f in (ROOT / "roles" / role / "tasks").glob("*.yml"):
            for task in _tasks(yaml.safe_load(f.read_text()) or []):
                mod = next((k for k in task if k in ("ansible.builtin.command", "ansible.builtin.shell")), None)
                if mod:
                    args = task[mod] if isinstance(task[mod], dict) else {}
                    assert "creates" in args or "changed_when" in task, f"{f}: {task.get('name')}"


def _tasks(items):
    for t in items:
        yield t
        for key in ("block", "rescue", "always"):
            yield from _tasks(t.get(key, []))


@needs_ansible
def test_playbooks_syntax(tmp_path):
    inv = _inventory(tmp_path / "inv", ROOT / "inventory/lab/group_vars")
    r = _run([VENV_BIN / "ansible-playbook", "--syntax-check", "-i", inv,
              *[f"playbooks/{p}.yml" for p in PLAYBOOKS]], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# --- rendered templates ----------------------------------------------------------------------------

@needs_ansible
@pytest.mark.slow
@pytest.mark.parametrize("inventory", ["lab", "okeanos"])
def test_hadoop_site_files_are_xml_with_per_host_properties(tmp_path, inventory):
    rendered = _render(tmp_path, ROOT / "inventory" / inventory,
                       extra={"hadoop_hdfs_site": {"dfs.blocksize": "64m", "dfs.replication": 2},
                              "hadoop_core_site": {"io.file.buffer.size": "131072"}})
    ips = {"master": "10.9.1.1", "worker1": "10.9.1.2", "worker2": "10.9.1.3"}
    for host, files in rendered.items():
        core, hdfs = _props(files["core-site.xml"]), _props(files["hdfs-site.xml"])
        yarn, mapred = _props(files["yarn-site.xml"]), _props(files["mapred-site.xml"])
        assert core["fs.defaultFS"] == "hdfs://master:9000"
        assert core["io.file.buffer.size"] == "131072"                      # added by the user
        assert hdfs["dfs.replication"] == "2" and hdfs["dfs.blocksize"] == "64m"   # overridden, added
        assert hdfs["dfs.namenode.name.dir"] == "file:///var/lib/hadoop/hdfs/name"
        assert hdfs["dfs.datanode.data.dir"] == "file:///var/lib/hadoop/hdfs/data"
        assert not any(v.startswith(("/tmp", "file:///tmp")) for v in {**core, **hdfs, **yarn}.values())
        assert hdfs["dfs.datanode.address"] == f"{ips[host]}:9866"            # per host
        assert hdfs["dfs.namenode.http-address"] == "10.9.1.1:9870"
        assert yarn["yarn.nodemanager.hostname"] == ips[host]
        assert yarn["yarn.resourcemanager.webapp.address"] == "10.9.1.1:8088"
        assert yarn["yarn.webapp.enable-rest-app-submissions"] == "false"   # simple auth: no REST submissions
        assert mapred["mapreduce.framework.name"] == "yarn"
        assert _props(files["capacity-scheduler.xml"])["yarn.scheduler.capacity.root.queues"] == "default"
        assert files["workers"].split() == list(ips.values())
        assert "JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64" in files["hadoop-env.sh"]
        heap = {"lab": 256, "okeanos": 1024}[inventory]   # the inventory's value, not the role default's
        assert f"HADOOP_HEAPSIZE_MAX={heap}m" in files["hadoop-env.sh"]
        units = {k for k in files if k.startswith("hadoop-") and k.endswith(".service")}
        expected = {"hadoop-datanode.service", "hadoop-nodemanager.service"}
        if host == "master":
            expected |= {"hadoop-namenode.service", "hadoop-resourcemanager.service"}
        assert units == expected
        assert "User=hadoop" in files["hadoop-datanode.service"]


@needs_ansible
@pytest.mark.slow
def test_a_changed_hadoop_file_restarts_only_the_daemons_that_read_it(tmp_path):
    """The handler's choice (`__hadoop_restart_units`) for one change at a time: a new release restarts
    every daemon of the host, a site file only the daemons that read it, a unit only itself, and the
    workers file or the login shells' PATH none (they restarted all four on any change)."""
    rendered = _render(tmp_path, ROOT / "inventory/lab")
    nn, rm, dn, nm = "hadoop-namenode", "hadoop-resourcemanager", "hadoop-datanode", "hadoop-nodemanager"
    for host, everyone in (("master", [nn, rm, dn, nm]), ("worker1", [dn, nm])):
        restarts = {k.removeprefix("restart "): v for k, v in rendered[host].items()
                    if k.startswith("restart ")}
        hdfs, yarn = [u for u in everyone if u in (nn, dn)], [u for u in everyone if u in (rm, nm)]
        assert restarts == {
            "release": everyone, "core-site.xml": everyone, "hadoop-env.sh": everyone,
            "hdfs-site.xml": hdfs, "yarn-site.xml": yarn,
            "capacity-scheduler.xml": [u for u in everyone if u == rm],
            "workers": [], "/etc/profile.d/scalelab-hadoop.sh": [],
            "/etc/systemd/system/hadoop-datanode.service": [dn]}, host


@needs_ansible
@pytest.mark.slow
def test_default_replication_follows_the_cluster_size_and_the_lab_leaves_safe_mode_sooner(tmp_path):
    rendered = _render(tmp_path, ROOT / "inventory/lab")
    hdfs = _props(rendered["master"]["hdfs-site.xml"])
    assert hdfs["dfs.replication"] == "3"
    # the lab's DataNodes share one machine: 5 s of safe-mode extension; a real cluster keeps Hadoop's 30 s
    assert hdfs["dfs.namenode.safemode.extension"] == "5000"
    okeanos = yaml.safe_load((ROOT / "inventory/okeanos/group_vars/all/hadoop.yml").read_text())
    assert "dfs.namenode.safemode.extension" not in (okeanos.get("hadoop_hdfs_site") or {})


@needs_ansible
@pytest.mark.slow
def test_ray_units_pin_every_port_to_the_private_address(tmp_path):
    rendered = _render(tmp_path, ROOT / "inventory/lab", extra={"ray_num_cpus": 2, "ray_object_store_memory_mb": 1024})
    head = rendered["master"]["ray-head.service"]
    worker = rendered["worker1"]["ray-worker.service"]
    for flag in ("--port=6379", "--dashboard-host=10.9.1.1", "--dashboard-port=8265",
                 "--ray-client-server-port=10001", "--node-manager-port=", "--object-manager-port=",
                 "--min-worker-port=", "--max-worker-port=", "--dashboard-agent-grpc-port=",
                 "--dashboard-agent-listen-port=", "--runtime-env-agent-port=", "--metrics-export-port=",
                 "--node-ip-address=10.9.1.1", "--block", "--num-cpus=2", "--object-store-memory=1073741824"):
        assert flag in head, flag
    assert "--address=10.9.1.1:6379" in worker and "--node-ip-address=10.9.1.2" in worker
    assert "--head" not in worker and "--dashboard-host" not in worker
    assert "Restart=always" in worker and "StartLimitIntervalSec=0" in worker
    env = rendered["worker2"]["ray.env"]
    assert "RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=/etc/scalelab/ray_auth_token" in env
    assert "RAY_ADDRESS=10.9.1.1:6379" in env
    assert "RAY_worker_niceness=0" in env.splitlines()  # workers at torchrun's priority
    # the ranks' arrays up to RayComm.INLINE_BYTES travel inside their calls
    assert f"RAY_max_direct_call_object_size={RayComm.INLINE_BYTES}" in env.splitlines()


@needs_ansible
@pytest.mark.slow
def test_torchrun_launcher_uses_the_masters_private_address(tmp_path):
    rendered = _render(tmp_path, ROOT / "inventory/lab")
    m, w = rendered["master"]["scalelab-torchrun"], rendered["worker2"]["scalelab-torchrun"]
    for text in (m, w):
        assert "--rdzv-backend=c10d" in text and "--rdzv-endpoint=10.9.1.1:29400" in text
        assert "export GLOO_SOCKET_IFNAME=eth1" in text
        assert 'SCALELAB_NNODES:-3' in text
    assert "is_host=true" in m and "is_host=false" in w
    assert "--local-addr=10.9.1.3" in w


# --- wheelhouse ------------------------------------------------------------------------------------

LOCK = "# header\nnumpy==2.4.6\n\ntorch==2.13.0+cpu  # cpu build\n"


def test_lock_key_ignores_comments_and_follows_pins():
    k = wheelhouse.lock_key(LOCK, tag="cp311-linux_x86_64")
    assert re.fullmatch(r"[0-9a-f]{16}", k)
    assert wheelhouse.lock_key("# other header\n" + LOCK + "\n# trailer\n", tag="cp311-linux_x86_64") == k
    assert wheelhouse.lock_key(LOCK.replace("2.4.6", "2.4.7"), tag="cp311-linux_x86_64") != k
    assert wheelhouse.lock_key(LOCK, tag="cp311-linux_aarch64") != k
    assert wheelhouse.requirement_lines(LOCK) == ["numpy==2.4.6", "torch==2.13.0+cpu"]


def test_build_once_per_lock_with_a_fake_pip(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    calls = tmp_path / "calls"
    fake = tmp_path / "fake_pip.py"
    fake.write_text(
        "import sys, pathlib\n"
        f"open({str(calls)!r}, 'a').write('x')\n"
        "d = pathlib.Path(sys.argv[sys.argv.index('--wheel-dir') + 1])\n"
        "for n in ('numpy-2.4.6-cp311-cp311-linux_x86_64.whl', 'torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl'):\n"
        "    (d / n).write_bytes(b'wheel ' + n.encode())\n")
    out = tmp_path / "wheelhouse"
    first = wheelhouse.build(lock, out, pip=[sys.executable, str(fake)], say=lambda m: None)
    assert first["built"] and first["ready"]
    with tarfile.open(first["tar"]) as tar:
        names = sorted(tar.getnames())
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert names == ["manifest.json", "numpy-2.4.6-cp311-cp311-linux_x86_64.whl",
                     "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"]
    second = wheelhouse.build(lock, out, pip=[sys.executable, str(fake)], say=lambda m: None)
    assert not second["built"] and second["key"] == first["key"] and calls.read_text() == "x"
    lock.write_text(LOCK + "scipy==1.17.1\n")
    third = wheelhouse.build(lock, out, pip=[sys.executable, str(fake)], say=lambda m: None)
    assert third["built"] and third["key"] != first["key"]


def test_build_failure_is_one_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    with pytest.raises(UserError, match="pip wheel failed"):
        wheelhouse.build(lock, tmp_path / "wh", pip=[sys.executable, "-c", "import sys; sys.exit('boom')"],
                         say=lambda m: None)
    with pytest.raises(UserError, match="make lock"):
        wheelhouse.build(tmp_path / "missing.lock", tmp_path / "wh")


# --- controller side of status / dashboard / put-data -----------------------------------------------

def _cluster(tmp_path: Path) -> Cluster:
    v = {"ansible_user": "root", "ansible_ssh_common_args": "-F /x/ssh_config"}
    nodes = (Node("master", "master", "10.9.0.10", "10.9.1.1", v), Node("worker1", "workers", "10.9.1.2", "10.9.1.2", v))
    return Cluster(tmp_path, nodes, {"ray_dashboard_port": 8265, "scalelab_venv": "{{ templated }}"})


def test_dashboard_tunnel_goes_to_the_private_address(tmp_path):
    argv = cluster.dashboard_argv(_cluster(tmp_path), 18265)
    assert argv[0] == "ssh" and argv[-1] == "root@10.9.0.10"
    assert "-N" in argv and "127.0.0.1:18265:10.9.1.1:8265" in argv
    assert "0.0.0.0" not in " ".join(argv)


def test_node_vars_fall_back_to_role_defaults(tmp_path):
    c = _cluster(tmp_path)
    assert cluster.node_var(c, "scalelab_data_dir") == "/srv/scalelab/data"     # not set -> default
    assert "set -a; . /etc/scalelab/ray.env" in cluster.status_command(c)


def test_token_and_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="fab provision"):
        cluster.ray_token(tmp_path)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts/ray_auth_token.txt").write_text("abc\n")
    assert cluster.ray_token(tmp_path) == "abc"
    with pytest.raises(UserError, match="fab gen-data tiny"):
        cluster.local_dataset("tiny", tmp_path)
    with pytest.raises(UserError, match="letters"):
        cluster.local_dataset("../etc/passwd", tmp_path)


@needs_ansible
def test_hadoop_without_archive_stops_early_with_one_line(tmp_path):
    """hadoop_enabled with no archive: the first play fails on localhost, naming the variables."""
    inv = _inventory(tmp_path / "inv", ROOT / "inventory/okeanos/group_vars")
    r = _run([VENV_BIN / "ansible-playbook", "playbooks/hadoop.yml", "-i", inv,
              "-e", '{"hadoop_archive_url": "", "hadoop_archive_src": "", "hadoop_enabled": true}'], tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "hadoop: no release archive: set hadoop_archive_src" in out
    assert "hadoop_archive_url" in out and "hadoop_enabled: false" in out
    assert "PLAY [Java]" not in out, "it must stop before touching any host"


@needs_ansible
def test_hadoop_missing_archive_file_is_one_line(tmp_path):
    inv = _inventory(tmp_path / "inv", ROOT / "inventory/lab/group_vars")
    r = _run([VENV_BIN / "ansible-playbook", "playbooks/hadoop.yml", "-i", inv,
              "-e", f'{{"hadoop_archive_src": "{tmp_path}/nope.tar.gz", "hadoop_enabled": true}}'], tmp_path)
    assert r.returncode != 0
    assert "is not a file on the controller" in r.stdout + r.stderr
