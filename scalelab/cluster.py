"""Cluster services from the controller: provision, status, dashboard tunnel, dataset placement.

Everything about the cluster (hosts, addresses, how to reach them, paths on the nodes) comes from the
Ansible inventory through :mod:`scalelab.inventory`; the commands that run on the nodes are the ones
the roles install (Ray's environment file, Hadoop's profile).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scalelab import inventory as _inventory
from scalelab.cli import REPO_ROOT
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node, node_var, parallel, sudo_refused

BIN = Path(sys.executable).parent
SERVICE_UNITS = ("ray-head", "ray-worker", "hadoop-namenode", "hadoop-datanode", "hadoop-resourcemanager",
                 "hadoop-nodemanager")


# --- provision -----------------------------------------------------------------------------------

def provision_argv(inventory: Path, extra: Sequence[str] = ()) -> list[str]:
    return [str(BIN / "ansible-playbook"), "site.yml", "-i", str(inventory), *extra]


def provision(inventory: Path, extra: Sequence[str] = ()) -> int:
    """`ansible-playbook site.yml -i INVENTORY` from the repository root (ansible.cfg applies)."""
    if not (REPO_ROOT / "site.yml").exists():
        raise UserError("site.yml is missing from the repository: restore it from git")
    if inventory.is_dir() and inventory.name == "lab" and not (inventory / "hosts.yml").exists():
        raise UserError("the lab is not up (hosts.yml is missing): run `fab lab-up` first")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg")}
    return subprocess.run(provision_argv(inventory, extra), cwd=REPO_ROOT, env=env).returncode


# --- Ray -----------------------------------------------------------------------------------------

def token_file(inventory: Path) -> Path:
    """The Ray token the ray role copied to the controller (<inventory>/artifacts/ray_auth_token.txt)."""
    base = inventory if inventory.is_dir() else inventory.parent
    return base / "artifacts" / "ray_auth_token.txt"


def ray_token(inventory: Path) -> str:
    path = token_file(inventory)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise UserError(f"no Ray token at {path}: run `fab provision` (the ray role fetches it)") from None
    if not token:
        raise UserError(f"{path} is empty: run `fab provision` again")
    return token


_ACTIVE = re.compile(r"^\s*(\d+)\s+node_[0-9a-f]+", re.M)
_CPU = re.compile(r"([\d.]+)/([\d.]+)\s+CPU\b")


def parse_ray_status(text: str) -> dict[str, Any]:
    """`ray status` -> {"alive": nodes listed under Active, "cpus": total CPUs}."""
    active = text.split("Active:", 1)[1] if "Active:" in text else ""
    for end in ("Pending:", "Idle:"):
        active = active.split(end, 1)[0]
    alive = sum(int(m.group(1)) for m in _ACTIVE.finditer(active))
    cpu = _CPU.search(text)
    return {"alive": alive, "cpus": float(cpu.group(2)) if cpu else 0.0}


NO_DIR = 3  # exit code of a remote command that found a directory the roles make missing


def require_dir(path: str) -> str:
    """Shell prefix: exit NO_DIR when `path` is missing (the controller creates nothing on the nodes)."""
    return f"test -d {shlex.quote(path)} || exit {NO_DIR}; "


def missing_dir(hosts: Sequence[str], path: str) -> str:
    return f"{', '.join(hosts)}: no directory {path}: run `fab provision` (role python_env makes it)"


def ray_env(cluster: Cluster) -> str:
    """Shell prefix exporting the node's Ray settings (address, token auth) for what follows it."""
    return f"set -a; . {shlex.quote(str(node_var(cluster, 'scalelab_ray_env')))}; set +a; "


def ray_status_command(cluster: Cluster) -> str:
    ray = shlex.quote(f"{node_var(cluster, 'scalelab_venv')}/bin/ray")
    return f"{ray_env(cluster)}{ray} status"


def ray_line(cluster: Cluster) -> tuple[str, bool]:
    proc = cluster.ssh(cluster.master, ray_status_command(cluster), timeout=60, check=False, root=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        return f"ray: not answering on {cluster.master.name} ({tail[:120]})", False
    st = parse_ray_status(proc.stdout)
    total = len(cluster.nodes)
    return f"ray: {st['alive']}/{total} nodes alive, {st['cpus']:g} CPUs", st["alive"] == total


# --- HDFS ----------------------------------------------------------------------------------------

def _hdfs(cluster: Cluster, args: str) -> str:
    home = shlex.quote(str(node_var(cluster, "hadoop_home")))
    user = shlex.quote(str(node_var(cluster, "hadoop_user")))
    return (f". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh; "
            f"sudo -n -E -u {user} {home}/bin/hdfs {args}")


def hdfs_running(cluster: Cluster) -> bool:
    proc = cluster.ssh(cluster.master, "systemctl is-active --quiet hadoop-namenode", timeout=30, check=False)
    return proc.returncode == 0


_LIVE = re.compile(r"Live datanodes \((\d+)\)")


def hdfs_line(cluster: Cluster) -> tuple[str, bool]:
    if not hdfs_running(cluster):
        if not node_var(cluster, "hadoop_enabled"):
            return "hdfs: not enabled (hadoop_enabled is false: datasets are local files on every node)", True
        return (f"hdfs: the NameNode is not running on {cluster.master.name}: see "
                f"`journalctl -u hadoop-namenode` there, then `fab provision --tags hadoop`"), False
    proc = cluster.ssh(cluster.master, _hdfs(cluster, "dfsadmin -report"), timeout=60, check=False, root=True)
    live = _LIVE.search(proc.stdout)
    safemode = cluster.ssh(cluster.master, _hdfs(cluster, "dfsadmin -safemode get"), timeout=60, check=False,
                           root=True)
    n = int(live.group(1)) if live else 0
    mode = "off" if "OFF" in safemode.stdout else "ON"
    ok = proc.returncode == 0 and n == len(cluster.nodes) and mode == "off"
    cap = re.search(r"Configured Capacity: \d+ \(([^)]+)\)", proc.stdout)
    return f"hdfs: {n}/{len(cluster.nodes)} DataNodes live, safemode {mode}" + (
        f", capacity {cap.group(1)}" if cap else ""), ok


# --- status --------------------------------------------------------------------------------------

def _host_probe(cluster: Cluster, n: Node) -> dict[str, Any]:
    units = " ".join(SERVICE_UNITS)
    cmd = ("systemctl is-system-running 2>/dev/null; echo ---; "
           "systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}'; echo ---; "
           f"for u in {units}; do s=$(systemctl is-active $u 2>/dev/null); "
           "[ \"$s\" = inactive ] && ! systemctl cat $u >/dev/null 2>&1 && continue; echo $u=$s; done")
    proc = cluster.ssh(n, cmd, timeout=20, check=False)
    if proc.returncode == 255:
        return {"host": n.name, "address": n.private_ip, "up": "DOWN", "services": "", "failed units": ""}
    state, failed, services = (proc.stdout.split("---\n") + ["", "", ""])[:3]
    return {"host": n.name, "address": n.private_ip, "up": state.strip() or "up",
            "services": " ".join(s for s in services.split() if "=" in s),
            "failed units": " ".join(failed.split()) or "-"}


def status(inventory: Path) -> dict[str, Any]:
    """Hosts (up, failed units, our services), Ray's live nodes, HDFS when it runs."""
    cluster = _inventory.load(inventory)
    probes = parallel(lambda n: _host_probe(cluster, n), cluster.nodes)
    hosts = []
    for n in cluster.nodes:
        p = probes[n.name]
        hosts.append(p if isinstance(p, dict) else {"host": n.name, "address": n.private_ip, "up": f"? ({p})",
                                                    "services": "", "failed units": ""})
    master_up = hosts[0]["up"] != "DOWN"
    lines = []
    ok = all(h["up"] != "DOWN" and h["failed units"] == "-" for h in hosts)
    for fn in (ray_line, hdfs_line):
        if master_up:
            line, good = fn(cluster)
        else:
            line, good = f"{fn.__name__.split('_')[0]}: master is down", False
        lines.append(line)
        ok = ok and good
    return {"hosts": hosts, "lines": lines, "ok": ok}


# --- dashboard -----------------------------------------------------------------------------------

def dashboard_argv(cluster: Cluster, local_port: int) -> list[str]:
    """ssh -N -L localhost:PORT:<master private address>:<dashboard port> to the master."""
    remote = int(node_var(cluster, "ray_dashboard_port"))
    argv = cluster.master.ssh_argv()
    target = argv.pop()
    return [*argv, "-N", "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{local_port}:{cluster.master.private_ip}:{remote}", target]


# --- datasets ------------------------------------------------------------------------------------

def local_dataset(name: str, data_dir: Path | None = None) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_', '-', '.'")
    path = (data_dir or REPO_ROOT / "data") / f"{name}.csv"
    if not path.is_file():
        raise UserError(f"dataset {name} is not on the controller ({path}): run `fab gen-data {name}` first")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _stream(node: Node, src: Path, command: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """src on the stdin of `command`, run as root on the node."""
    with src.open("rb") as fh:
        proc = subprocess.run([*node.ssh_argv(), node.as_root(command)], stdin=fh, capture_output=True,
                              timeout=timeout)
    sudo_refused(node, proc.stderr)
    return proc


def put_local(cluster: Cluster, src: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Copy src to <scalelab_data_dir>/<name> on every node (skipped where the same file is there)."""
    digest = sha256_file(src)
    dest = f"{node_var(cluster, 'scalelab_data_dir')}/{src.name}"
    q = shlex.quote(dest)

    def one(n: Node) -> str:
        have = cluster.ssh(n, f"cat {q}.sha256 2>/dev/null", timeout=30, check=False).stdout.strip()
        if have == digest:
            return "unchanged"
        cmd = (require_dir(str(Path(dest).parent)) + f"cat > {q}.part && "
               f"echo {digest} > {q}.sha256.part && mv {q}.part {q} && mv {q}.sha256.part {q}.sha256")
        proc = _stream(n, src, cmd, timeout=3600)
        if proc.returncode == NO_DIR:
            raise RuntimeError(missing_dir([n.name], str(Path(dest).parent)))
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or "copy failed")
        return "copied"

    res = parallel(one, cluster.nodes)
    bad = {k: v for k, v in res.items() if isinstance(v, Exception)}
    if bad:
        raise UserError("put-data failed on " + "; ".join(f"{k}: {v}" for k, v in bad.items()))
    say(f"{src.name} -> {dest} on {', '.join(f'{k} ({v})' for k, v in res.items())}")
    return {"uri": f"file://{dest}", **res}


def put_hdfs(cluster: Cluster, src: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Stream src into HDFS <hadoop_data_path>/<name> through the master (replaced if the size differs)."""
    dest = f"{node_var(cluster, 'hadoop_data_path')}/{src.name}"
    uri = f"hdfs://{cluster.master.name}:{node_var(cluster, 'hadoop_namenode_rpc_port')}{dest}"
    size = cluster.ssh(cluster.master, _hdfs(cluster, f"dfs -stat %b {shlex.quote(dest)} 2>/dev/null"),
                       timeout=60, check=False, root=True).stdout.strip()
    if size == str(src.stat().st_size):
        say(f"{src.name}: already in HDFS at {dest}")
        return {"uri": uri, "master": "unchanged"}
    proc = _stream(cluster.master, src, _hdfs(cluster, f"dfs -put -f - {shlex.quote(dest)}"), timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise UserError(f"hdfs put of {src.name} failed ({tail}): check `fab status`")
    say(f"{src.name} -> {uri}")
    return {"uri": uri, "master": "copied"}


def put_data(inventory: Path, name: str, say: Callable[[str], None] = print,
             data_dir: Path | None = None) -> dict[str, str]:
    """The same local copy on every node (what `fab run-experiment` reads), and a copy in HDFS too
    when HDFS runs (``hdfs_uri``: read it with ``--args "--input URI"``)."""
    src = local_dataset(name, data_dir)
    cluster = _inventory.load(inventory)
    out = put_local(cluster, src, say)
    if hdfs_running(cluster):
        out["hdfs_uri"] = put_hdfs(cluster, src, say)["uri"]
    return out


# --- code ----------------------------------------------------------------------------------------

def sync_code(cluster: Cluster, say: Callable[[str], None] = print) -> dict[str, str]:
    """This checkout's workloads package on every node, as the python_env role ships it (the same tar
    at <src>/.workloads.tar, unpacked in place of the old package); {node: its workloads hash}."""
    import tempfile

    from scalelab import provenance as _prov
    from scalelab.wheelhouse import pack_tree
    src = str(node_var(cluster, "scalelab_src"))
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "workloads.tar"
        pack_tree(_prov.WORKLOADS_DIR, tar)
        data = tar.read_bytes()
    cmd = (require_dir(src) + f"cd {shlex.quote(src)} && cat > .workloads.tar.part && mv .workloads.tar.part "
           ".workloads.tar && rm -rf workloads.new && mkdir workloads.new && "
           "tar -xf .workloads.tar -C workloads.new --no-same-owner && rm -rf workloads && "
           "mv workloads.new/workloads workloads && rmdir workloads.new && "
           f"{_prov.node_code_hash_command(src)}")
    res = parallel(lambda n: _prov.remote(n, cmd, root=True, timeout=120, input=data), cluster.nodes)
    for r in res.values():
        if isinstance(r, UserError):
            raise r
    want = _prov.code_hash()
    bad = {}
    for h, r in res.items():
        if isinstance(r, Exception):
            bad[h] = str(r)
        elif r.returncode == NO_DIR:
            bad[h] = missing_dir([h], src)
        elif r.returncode != 0 or r.stdout.strip() != want:
            bad[h] = (r.stderr.strip().splitlines() or [f"hash {r.stdout.strip()[:12]} after the copy"])[-1]
    if bad:
        raise UserError("sync-code failed on " + "; ".join(f"{k}: {v}" for k, v in bad.items()))
    say(f"workloads {want[:12]} on {', '.join(res)}")
    return {h: want for h in res}
