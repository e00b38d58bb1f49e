"""Cluster services from the controller: provision, status, dashboard tunnel, dataset placement.

Everything about the cluster (hosts, addresses, how to reach them, paths on the nodes) comes from the
Ansible inventory through :mod:`scalelab.inventory`; the commands that run on the nodes are the ones
the roles install (Ray's environment file, Hadoop's profile).
"""
from __future__ import annotations

import hashlib
import json
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


NO_DIR = 3  # exit code of a remote command that found a directory the roles make missing


def require_dir(path: str) -> str:
    """Shell prefix: exit NO_DIR when `path` is missing (the controller creates nothing on the nodes)."""
    return f"test -d {shlex.quote(path)} || exit {NO_DIR}; "


def missing_dir(hosts: Sequence[str], path: str) -> str:
    return f"{', '.join(hosts)}: no directory {path}: run `fab provision` (role python_env makes it)"


def ray_env(cluster: Cluster) -> str:
    """Shell prefix exporting the node's Ray settings (address, token auth) for what follows it."""
    return f"set -a; . {shlex.quote(str(node_var(cluster, 'scalelab_ray_env')))}; set +a; "


# --- HDFS ----------------------------------------------------------------------------------------

def _hdfs(cluster: Cluster, args: str) -> str:
    home = shlex.quote(str(node_var(cluster, "hadoop_home")))
    user = shlex.quote(str(node_var(cluster, "hadoop_user")))
    return (f". /etc/profile.d/scalelab-java.sh; . /etc/profile.d/scalelab-hadoop.sh; "
            f"sudo -n -E -u {user} {home}/bin/hdfs {args}")


def hdfs_running(cluster: Cluster) -> bool:
    proc = cluster.ssh(cluster.master, "systemctl is-active --quiet hadoop-namenode", timeout=30, check=False)
    return proc.returncode == 0


# --- status: Ray's, the NameNode's and the ResourceManager's own JSON, read on the master ------------

# Ray's own view of its nodes (ray.nodes(): one dict per node, dead ones included), as one JSON line.
RAY_NODES_JSON = ("import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
                  "print(json.dumps(ray.nodes(), default=str))")
# GET each URL given, on the master (the web UIs bind to the private address only): one JSON line per
# URL with its body or its error; no proxy, whatever the environment says.
FETCH_JSON = ("import json, sys, urllib.request\n"
              "get = urllib.request.build_opener(urllib.request.ProxyHandler({})).open\n"
              "for url in sys.argv[1:]:\n"
              "    try:\n"
              "        print(json.dumps({'url': url, 'body': json.load(get(url, timeout=15))}))\n"
              "    except Exception as exc:\n"
              "        print(json.dumps({'url': url, 'error': f'{type(exc).__name__}: {exc}'[:300]}))\n")
SECTIONS = ("ray", "units", "web")


def service_urls(cluster: Cluster) -> dict[str, str]:
    """The NameNode's JMX beans, the ResourceManager's cluster metrics and its unhealthy NodeManagers (with
    their health reports), at the master's private address."""
    ip = cluster.master.private_ip
    jmx = f"http://{ip}:{node_var(cluster, 'hadoop_namenode_http_port')}/jmx?qry=Hadoop:service=NameNode,name="
    rm = f"http://{ip}:{node_var(cluster, 'hadoop_rm_webapp_port')}/ws/v1/cluster"
    return {"fsnamesystem": jmx + "FSNamesystemState", "namenodeinfo": jmx + "NameNodeInfo",
            "yarn": f"{rm}/metrics", "yarn_unhealthy": f"{rm}/nodes?states=UNHEALTHY"}


def ray_nodes_command(cluster: Cluster) -> str:
    """A root shell command on the master printing Ray's node list (:data:`RAY_NODES_JSON`) as its last line."""
    py = shlex.quote(f"{node_var(cluster, 'scalelab_venv')}/bin/python")
    return f"({ray_env(cluster)}{py} -c {shlex.quote(RAY_NODES_JSON)} 2>&1 | tail -n 1)"


def status_command(cluster: Cluster) -> str:
    """One command on the master: Ray's node list, the Hadoop master units' states, then the NameNode's
    and ResourceManager's JSON; each section after its '@name' line."""
    q = shlex.quote
    urls = " ".join(q(u) for u in service_urls(cluster).values())
    return (f"echo @ray; {ray_nodes_command(cluster)}; "
            "echo @units; for u in hadoop-namenode hadoop-resourcemanager; do echo $u=$(systemctl is-active $u); "
            f"done; echo @web; python3 -c {q(FETCH_JSON)} {urls} 2>&1")


def parse_status_output(text: str) -> dict[str, Any]:
    """:func:`status_command`'s output -> {"ray": Ray's line, "units": {unit: state}, "web": {url: item}}."""
    sections: dict[str, list[str]] = {s: [] for s in SECTIONS}
    cur: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@") and line[1:] in SECTIONS:
            cur = sections[line[1:]]
        elif cur is not None and line.strip():
            cur.append(line)
    web = {}
    for line in sections["web"]:
        try:
            item = json.loads(line)
            web[item["url"]] = item
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    units = dict(x.split("=", 1) for x in sections["units"] if "=" in x)
    return {"ray": (sections["ray"] or [""])[-1], "units": units, "web": web}


def live_ray_nodes(line: str) -> dict[str, float] | None:
    """{private address: CPUs} of the live nodes in Ray's node list (``ray.nodes()`` as one JSON line, dead
    nodes included), or None where the line is not that list (Ray's error)."""
    try:
        nodes = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        return None
    return {str(n.get("NodeManagerAddress")): float((n.get("Resources") or {}).get("CPU", 0))
            for n in nodes if n.get("Alive")}


def ray_summary(line: str, expected: dict[str, str]) -> dict[str, Any]:
    """Ray's node list (ray.nodes() as JSON) against the nodes the inventory expects ({private address:
    name}): how many are alive, which are missing, CPUs of the live nodes."""
    alive = live_ray_nodes(line)
    if alive is None:
        return {"ok": False, "alive": 0, "expected": len(expected), "cpus": 0.0, "missing": list(expected.values()),
                "error": line.strip()[:200] or "no output"}
    missing = [name for ip, name in expected.items() if ip not in alive]
    return {"ok": not missing, "alive": len(set(expected) & set(alive)), "expected": len(expected),
            "cpus": sum(alive.values()), "missing": missing, "error": None}


def _bean(item: dict | None) -> dict[str, Any] | None:
    beans = ((item or {}).get("body") or {}).get("beans") or []
    return beans[0] if beans else None


def hdfs_summary(fsn: dict | None, info: dict | None, expected: dict[str, str]) -> dict[str, Any]:
    """The NameNode's JMX beans FSNamesystemState and NameNodeInfo against the expected DataNodes
    ({private address: name}; the DataNodes register by address)."""
    state, nni = _bean(fsn), _bean(info)
    if state is None:
        return {"ok": False, "live": 0, "expected": len(expected),
                "error": (fsn or {}).get("error") or "no FSNamesystemState bean"}
    live_ips = set()
    try:
        for node in json.loads((nni or {}).get("LiveNodes") or "{}").values():
            live_ips.add(str(node.get("xferaddr", "")).rsplit(":", 1)[0])
    except (json.JSONDecodeError, AttributeError):
        pass
    live = int(state.get("NumLiveDataNodes", 0))
    safemode = state.get("FSState") == "safeMode" or bool((nni or {}).get("Safemode"))
    missing = [name for ip, name in expected.items() if ip not in live_ips] if nni else []
    return {"ok": live == len(expected) and not missing and not safemode, "live": live, "expected": len(expected),
            "dead": int(state.get("NumDeadDataNodes", 0)), "safemode": safemode, "missing": missing,
            "capacity_bytes": state.get("CapacityTotal"), "remaining_bytes": state.get("CapacityRemaining"),
            "error": None}


def unhealthy_reports(answer: dict | None, expected: dict[str, str]) -> dict[str, str]:
    """{node name: its NodeManager's health report} from the ResourceManager's
    /ws/v1/cluster/nodes?states=UNHEALTHY, by the host name or address YARN gives (a host the inventory does
    not name by either keeps YARN's name).  Empty where there is no such answer."""
    nodes = (((answer or {}).get("body") or {}).get("nodes") or {}).get("node") or []
    names = {**{name: name for name in expected.values()}, **expected}
    return {names.get(str(n.get("nodeHostName")), str(n.get("nodeHostName"))):
            " ".join(str(n.get("healthReport") or "no report").split()) for n in nodes if isinstance(n, dict)}


def yarn_summary(metrics: dict | None, expected: dict[str, str], unhealthy: dict | None) -> dict[str, Any]:
    """The ResourceManager's /ws/v1/cluster/metrics against the expected NodeManagers ({private address:
    name}), with the health report of each unhealthy one (:func:`unhealthy_reports`)."""
    cm = ((metrics or {}).get("body") or {}).get("clusterMetrics")
    if not cm:
        return {"ok": False, "active": 0, "expected": len(expected),
                "error": (metrics or {}).get("error") or "no clusterMetrics"}
    active = int(cm.get("activeNodes", 0))
    return {"ok": active == len(expected), "active": active, "expected": len(expected),
            "lost": int(cm.get("lostNodes", 0)), "unhealthy": int(cm.get("unhealthyNodes", 0)),
            "health_reports": unhealthy_reports(unhealthy, expected),
            "vcores": cm.get("totalVirtualCores"), "memory_mb": cm.get("totalMB"), "error": None}


def service_states(cluster: Cluster, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ray, HDFS and YARN from the master's answers (:func:`parse_status_output`), each with its status
    line and whether it is healthy (HDFS and YARN are, when Hadoop is not enabled and not running)."""
    expected = {n.private_ip: n.name for n in cluster.nodes}
    m = cluster.master.name
    ray = ray_summary(out["ray"], expected)
    if ray["error"]:
        ray["line"] = f"ray: not answering on {m} ({ray['error'][:120]}): see `journalctl -u ray-head` there"
    else:
        ray["line"] = f"ray: {ray['alive']}/{ray['expected']} nodes alive, {ray['cpus']:g} CPUs" + (
            f" ({', '.join(ray['missing'])} not alive: see `journalctl -u ray-worker` there)" if ray["missing"] else "")
    urls, web = service_urls(cluster), out["web"]
    hdfs = hdfs_summary(web.get(urls["fsnamesystem"]), web.get(urls["namenodeinfo"]), expected)
    if not hdfs["error"]:
        cap = hdfs["capacity_bytes"]
        hdfs["line"] = (f"hdfs: {hdfs['live']}/{hdfs['expected']} DataNodes live, safemode "
                        f"{'ON' if hdfs['safemode'] else 'off'}"
                        + (f", capacity {cap / 1e9:.1f} GB" if isinstance(cap, int | float) else "")
                        + (f" ({', '.join(hdfs['missing'])} not live)" if hdfs["missing"] else ""))
    yarn = yarn_summary(web.get(urls["yarn"]), expected, web.get(urls["yarn_unhealthy"]))
    if not yarn["error"]:
        reports = yarn["health_reports"]
        yarn["line"] = (f"yarn: {yarn['active']}/{yarn['expected']} NodeManagers active, {yarn['vcores']} vcores, "
                        f"{yarn['memory_mb']} MB" + (f", {yarn['lost']} lost" if yarn["lost"] else "")
                        + (f", {yarn['unhealthy']} unhealthy" if yarn["unhealthy"] else "")
                        + (f" ({'; '.join(f'{name}: {why}' for name, why in reports.items())}): fix what "
                           "it says (a disk above the threshold: free space on it)" if reports else ""))
    enabled = bool(node_var(cluster, "hadoop_enabled"))
    for svc, name, unit, what in ((hdfs, "hdfs", "hadoop-namenode", "NameNode"),
                                  (yarn, "yarn", "hadoop-resourcemanager", "ResourceManager")):
        svc["unit"] = out["units"].get(unit, "unknown")
        if not svc["error"]:
            continue
        if not enabled and svc["unit"] != "active":
            svc.update(ok=True, line=f"{name}: not enabled (hadoop_enabled is false: datasets are local files on "
                                     "every node)")
        elif svc["unit"] != "active":
            svc["line"] = (f"{name}: the {what} is not running on {m} ({svc['unit']}): see `journalctl -u {unit}` "
                           "there, then `fab provision --tags hadoop`")
        else:
            svc["line"] = (f"{name}: the {what} on {m} does not answer ({svc['error'][:120]}): see "
                           f"`journalctl -u {unit}` there, then `fab provision --tags hadoop`")
    return {"ray": ray, "hdfs": hdfs, "yarn": yarn}


def gcs_live_nodes(cluster: Cluster) -> dict[str, float] | None:
    """{private address: CPUs} of the live Ray nodes as the GCS has them (a driver's ``ray.nodes()`` on the
    master, 1.5-4 s), or None where Ray does not answer.  The authority where the dashboard's faster view
    (:data:`scalelab.provenance.RAY_NODES`) lacks a node or does not answer: after a restart of the head
    that view missed both workers of the lab for over 4 minutes, while the GCS had them."""
    proc = cluster.ssh(cluster.master, ray_nodes_command(cluster), timeout=90, check=False, root=True)
    return live_ray_nodes(proc.stdout.strip())


def services(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Ray, HDFS and YARN as `fab status` sees them: one ssh to the master."""
    proc = cluster.ssh(cluster.master, status_command(cluster), timeout=90, check=False, root=True)
    return service_states(cluster, parse_status_output(proc.stdout))


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
    """Hosts (up, failed units, our services), then Ray, HDFS and YARN from their own JSON on the master:
    {"ok", "inventory", "hosts", "ray", "hdfs", "yarn", "lines"} (what `fab status --json` prints)."""
    cluster = _inventory.load(inventory)
    master = cluster.master

    def unanswered(why: str) -> dict[str, dict[str, Any]]:
        return {k: {"ok": False, "error": why, "line": f"{k}: {why}"} for k in ("ray", "hdfs", "yarn")}

    def probe(n: Node) -> tuple[dict[str, Any], dict[str, Any] | None]:
        host = _host_probe(cluster, n)
        if n != master:
            return host, None
        if host["up"] == "DOWN":
            return host, unanswered(f"{master.name} is down")
        try:
            return host, services(cluster)
        except RuntimeError as exc:  # the ssh command timed out
            return host, unanswered(f"no answer from {master.name} ({exc})")

    res = parallel(probe, cluster.nodes)
    hosts = [r[0] if isinstance(r, tuple) else {"host": n.name, "address": n.private_ip, "up": f"? ({r})",
                                                "services": "", "failed units": ""}
             for n, r in ((n, res[n.name]) for n in cluster.nodes)]
    m = res[master.name]
    svcs = m[1] if isinstance(m, tuple) else unanswered(f"no answer from {master.name} ({m})")
    ok = all(h["up"] != "DOWN" and h["failed units"] == "-" for h in hosts) and all(s["ok"] for s in svcs.values())
    return {"ok": ok, "inventory": str(inventory), "hosts": hosts, **svcs,
            "lines": [s["line"] for s in svcs.values()]}


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


def _data_dest(cluster: Cluster, src: Path) -> str:
    return f"{node_var(cluster, 'scalelab_data_dir')}/{src.name}"


def has_copy(cluster: Cluster, n: Node, src: Path, digest: str) -> bool:
    """Whether node ``n`` holds this very file (the digest :func:`put_local` wrote beside it)."""
    q = shlex.quote(_data_dest(cluster, src))
    return cluster.ssh(n, f"cat {q}.sha256 2>/dev/null", timeout=30, check=False).stdout.strip() == digest


def put_local(cluster: Cluster, src: Path, say: Callable[[str], None], digest: str | None = None) -> dict[str, str]:
    """Copy src to <scalelab_data_dir>/<name> on every node (skipped where the same file is there);
    ``digest``: src's sha256, when the caller has it."""
    digest = digest or sha256_file(src)
    dest = _data_dest(cluster, src)
    q = shlex.quote(dest)

    def one(n: Node) -> str:
        if has_copy(cluster, n, src, digest):
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
    at <src>/.workloads.tar, unpacked in place of the old package), its bytecode compiled as root (the
    runs' user cannot write it there, and every rank would compile the package again); {node: its
    workloads hash}."""
    import tempfile

    from scalelab import provenance as _prov
    from scalelab.wheelhouse import pack_tree
    src = str(node_var(cluster, "scalelab_src"))
    py = shlex.quote(f"{node_var(cluster, 'scalelab_venv')}/bin/python")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "workloads.tar"
        pack_tree(_prov.WORKLOADS_DIR, tar)
        data = tar.read_bytes()
    cmd = (require_dir(src) + f"cd {shlex.quote(src)} && cat > .workloads.tar.part && mv .workloads.tar.part "
           ".workloads.tar && rm -rf workloads.new && mkdir workloads.new && "
           "tar -xf .workloads.tar -C workloads.new --no-same-owner && rm -rf workloads && "
           "mv workloads.new/workloads workloads && rmdir workloads.new && "
           # a file that does not compile fails its run with the error; the copy stands as it is
           f"{{ {py} -m compileall -q workloads >/dev/null 2>&1 || true; }} && "
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
