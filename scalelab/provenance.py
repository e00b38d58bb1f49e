"""What a run ran with: the controller's code and lock, the inventory, the parameters, and each node's
code, machine and versions, gathered in one ssh round trip per node (:func:`probe`).

The same probe answers the pre-run checks (CPUs, the run lock, the dataset, the shared directory, the
live Ray nodes), so a run's start costs one connection per node, reused through ControlMaster.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scalelab.cli import REPO_ROOT
from scalelab.inventory import Cluster, Node, node_var, parallel, sudo_refused

WORKLOADS_DIR = REPO_ROOT / "workloads"
NODE_LOCK = REPO_ROOT / "requirements-node.lock"


def mux_options() -> list[str]:
    """ssh options that share one connection per host between the short commands of a run."""
    d = Path.home() / ".cache" / "scalelab" / "ssh"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return ["-o", "ControlMaster=auto",           # the first command opens the shared connection
            "-o", f"ControlPath={d}/%C",          # %C: a hash of host, port and user (short socket path)
            "-o", "ControlPersist=60",            # kept a minute for the next command
            "-o", "ConnectTimeout=10"]            # a node that is down answers in seconds, not minutes


def remote(node: Node, command: str, *, root: bool = False, timeout: float = 30,
           input: bytes | None = None, binary: bool = False) -> subprocess.CompletedProcess[Any]:
    """`command` on a node over the shared connection (stdout as bytes with binary=True); raises
    RuntimeError when it does not finish."""
    try:
        proc = subprocess.run([*node.ssh_argv(*mux_options()), node.as_root(command) if root else command],
                              capture_output=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{node.name}: no answer in {timeout:.0f} s") from None
    out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                      proc.stdout if binary else proc.stdout.decode(errors="replace"),
                                      proc.stderr.decode(errors="replace"))
    if root:
        sudo_refused(node, out.stderr)
    return out


# --- hashes on the controller ------------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_files(src: Path = WORKLOADS_DIR) -> list[Path]:
    """The files the python_env role ships (scalelab.wheelhouse.pack_tree's selection)."""
    return sorted((p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix != ".pyc" and not any(part.startswith(".") for part in p.relative_to(src).parts)),
                  key=lambda p: str(p.relative_to(src.parent)))


def code_hash(src: Path = WORKLOADS_DIR) -> str:
    """sha256 of `sha256sum` over the package's files in C order: the same as NODE_CODE_HASH on a node."""
    lines = "".join(f"{_sha(p.read_bytes())}  {p.relative_to(src.parent)}\n" for p in code_files(src))
    return _sha(lines.encode())


def node_code_hash_command(src_dir: str) -> str:
    return (f"cd {shlex.quote(src_dir)} 2>/dev/null && find workloads -type f ! -path '*/__pycache__/*' "
            "! -name '*.pyc' ! -path '*/.*' | LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -c1-64")


def file_hash(path: Path) -> str | None:
    try:
        return _sha(path.read_bytes())
    except OSError:
        return None


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def inventory_id(cluster: Cluster) -> dict[str, str]:
    """The inventory's name and a hash of what the controller read of it (hosts, addresses, variables)."""
    inv = cluster.inventory
    name = inv.parent.name if inv.name in ("hosts.yml", "hosts.yaml", "hosts.ini") else inv.name
    lab = cluster.groupvars.get("scalelab_lab_name")
    doc = {"nodes": [[n.name, n.group, n.address, n.private_ip] for n in cluster.nodes],
           "vars": {k: cluster.groupvars[k] for k in sorted(cluster.groupvars)}}
    return {"name": str(lab or name), "hash": _sha(json.dumps(doc, sort_keys=True, default=str).encode())[:16]}


def params_hash(workload: str, framework: str, nodes: int, dataset: str | None, extra: Sequence[str]) -> str:
    """What the user asked for (not what the runner derived from the nodes, such as --threads)."""
    doc = [workload, framework, int(nodes), dataset, list(extra)]
    return _sha(json.dumps(doc).encode())[:16]


# --- the probe: one round trip per node ----------------------------------------------------------------

VERSIONS = ("import json, platform; from importlib import metadata as m\n"
            "def v(d):\n"
            "    try: return m.version(d)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({'python': platform.python_version(), 'ray': v('ray'), 'torch': v('torch')}))")

# The live Ray nodes from the head's dashboard (``/nodes?view=summary``, Ray's own JSON, with the cluster's
# token): ~0.1 s, where a driver (ray.init + ray.nodes()) takes 1.5-4 s to connect and register.
RAY_NODES = ("import json, os, sys, urllib.request\n"
             "token = os.environ.get('RAY_AUTH_TOKEN_PATH') if os.environ.get('RAY_AUTH_MODE') == 'token' else None\n"
             "auth = {'Authorization': 'Bearer ' + open(token).read().strip()} if token else {}\n"
             "req = urllib.request.Request(sys.argv[1], headers=auth)\n"
             "nodes = json.load(urllib.request.urlopen(req, timeout=20))['data']['summary']\n"
             "print(json.dumps([[n['raylet']['nodeManagerAddress'], n['raylet']['resourcesTotal'].get('CPU', 0)]\n"
             "                  for n in nodes if n['raylet']['state'] == 'ALIVE']))")

BUSY = 75  # exit code of flock when the node's run lock is taken (EX_TEMPFAIL)


def run_lock(cluster: Cluster) -> str:
    return f"{node_var(cluster, 'scalelab_run_dir')}/run.lock"


def probe_command(cluster: Cluster, *, dataset: str | None = None, ray: bool = False) -> str:
    """A root shell script printing ``key=value`` lines: machine, versions, code, run lock, dataset,
    shared marker and (ray=True, for the master) the live Ray nodes."""
    q = shlex.quote
    run_dir = str(node_var(cluster, "scalelab_run_dir"))
    py = f"{node_var(cluster, 'scalelab_venv')}/bin/python"
    src = str(node_var(cluster, "scalelab_src"))
    marker = f"{node_var(cluster, 'scalelab_shared_dir')}/.scalelab-shared"
    lines = [
        "echo cpus=$(nproc)",
        "echo cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)",
        "echo mem_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)",
        f"echo code=$({node_code_hash_command(src)})",
        f"echo versions=$({q(py)} -c {q(VERSIONS)} 2>/dev/null)",
        f"if [ -d {q(run_dir)} ] && [ ! -L {q(run_dir)} ]; then "
        f"flock --nonblock --conflict-exit-code {BUSY} {q(run_lock(cluster))} true; echo lock=$?; "
        "else echo lock=nodir; fi",
        "echo units=$(systemctl list-units --plain --no-legend 'scalelab-run-*' 2>/dev/null "
        "| awk '{print $1}' | tr '\\n' ' ')",
        f"echo shared=$(cat {q(marker)} 2>/dev/null)",
    ]
    if dataset:
        lines.append(f"test -s {q(dataset)} && echo dataset=1 || echo dataset=0")
    if ray:
        env = q(str(node_var(cluster, "scalelab_ray_env")))
        url = (f"http://{cluster.master.private_ip}:{node_var(cluster, 'ray_dashboard_port')}"
               "/nodes?view=summary")
        lines.append(f"echo ray=$(set -a; . {env}; set +a; {q(py)} -c {q(RAY_NODES)} {q(url)} 2>&1 | tail -n1)")
    return "; ".join(lines)


def parse_probe(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value.strip()
    for key in ("versions",):
        try:
            out[key] = json.loads(out.get(key) or "null")
        except json.JSONDecodeError:
            out[key] = None
    return out


def probe(cluster: Cluster, nodes: Sequence[Node], *, dataset: str | None = None,
          ray: bool = False) -> dict[str, dict[str, Any] | Exception]:
    """{node: probe values, or the exception that kept it from answering}; ray= asks the master only."""
    def one(n: Node) -> dict[str, Any]:
        proc = remote(n, probe_command(cluster, dataset=dataset, ray=ray and n == cluster.master), root=True,
                      timeout=60)
        if proc.returncode == 255:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["ssh failed"])[-1])
        return parse_probe(proc.stdout)
    return parallel(one, nodes)


def node_facts(p: dict[str, Any]) -> dict[str, Any]:
    """What a record keeps of a node's probe."""
    mem = p.get("mem_kib") or ""
    return {"cpu_model": p.get("cpu_model") or None, "cores": int(p["cpus"]) if str(p.get("cpus")).isdigit() else None,
            "memory_gib": round(int(mem) / 2**20, 1) if mem.isdigit() else None,
            "workloads_hash": p.get("code") or None, "versions": p.get("versions")}


def controller(cluster: Cluster) -> dict[str, Any]:
    return {"git": git_state(), "node_lock_hash": file_hash(NODE_LOCK), "workloads_hash": code_hash(),
            "inventory": inventory_id(cluster)}
