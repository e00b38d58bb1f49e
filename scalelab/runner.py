"""`fab run-experiment`: run a workload on N nodes of the running cluster and collect its record.

Checks first, in one ssh round trip per node (:mod:`scalelab.provenance`): N against the hosts (and,
for Ray, the live Ray nodes), the run lock, the dataset, the workloads code against this checkout's,
the shared directory.  Every rank runs as the cluster user in a transient systemd unit
``scalelab-run-<run id>`` on its node: Ray as one driver on the master against the running cluster,
torch as torchrun on the N hosts at once through the node launcher.  Stopping the unit ends every
process of the rank, whatever it forked; the controller stops the units when a run fails, times out
or is interrupted, and each node stops its unit by itself when the controller's ssh connection ends.
While it runs, a live line shows the elapsed time and every node's CPU and memory; at the end the
record (with its provenance) and the logs land in ``results/<workload>/``.  A failure exits non-zero
with a ``failed`` record; a partial result is never marked ok.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelab import provenance as _prov
from scalelab import results as _results
from scalelab.cluster import gcs_live_nodes, missing_dir
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node, node_var, parallel
from scalelab.provenance import BUSY
from scalelab.sampler import Sampler
from workloads.record import fail_record, new_record, write_record

Say = Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    name: str
    module: str
    frameworks: tuple[str, ...]
    data: str | None          # "graph": a CSV edge list on every node; None: the workload makes its own


WORKLOADS = {w.name: w for w in (
    Workload("pagerank", "workloads.pagerank", ("ray", "torch"), "graph"),
    Workload("kmeans", "workloads.kmeans", ("ray", "torch"), "graph"),
    Workload("pneumonia", "workloads.pneumonia", ("ray", "torch"), None),
    Workload("xgboost", "workloads.xgboost", ("ray", "reference"), None),
    Workload("cifar-pbt", "workloads.cifar_pbt", ("ray",), None),
)}

def workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise UserError(f"unknown workload {name!r}: choose one of {', '.join(WORKLOADS)}") from None


def frameworks(wl: Workload, choice: str) -> list[str]:
    if choice == "both":
        return [f for f in ("ray", "torch") if f in wl.frameworks]
    if choice not in wl.frameworks:
        raise UserError(f"{wl.name} runs with {', '.join(wl.frameworks)}, not {choice!r}")
    return [choice]


def dataset_path(cluster: Cluster, name: str) -> str:
    return f"{node_var(cluster, 'scalelab_data_dir')}/{name}.csv"


# --- checks: one round trip per node ------------------------------------------------------------

def _raise_user_errors(results: dict) -> None:
    """A per-node UserError (sudo wants a password) is the user's to fix: raise the first one."""
    for r in results.values():
        if isinstance(r, UserError):
            raise r


def preflight(cluster: Cluster, wl: Workload, fws: Sequence[str], chosen: Sequence[Node],
              dataset: str | None) -> tuple[int, dict[str, dict[str, Any]]]:
    """Every check a run needs, from one probe per node (:func:`scalelab.provenance.probe`): reachable,
    idle, the dataset there, the same workloads code as here, Ray's live nodes and the shared directory.
    Returns the fewest CPUs of the chosen nodes and each chosen node's facts for the record."""
    ray = "ray" in fws
    shared = ray and wl.data is None  # Ray may place Train workers and Tune trials on any live node
    targets = list(cluster.nodes) if shared else list(chosen)
    ds = dataset_path(cluster, str(dataset)) if wl.data == "graph" else None
    res = _prov.probe(cluster, targets, dataset=ds, ray=ray)
    _raise_user_errors(res)
    names = [n.name for n in chosen]
    down = [h for h in names if isinstance(res[h], Exception)]
    if down:
        raise UserError(f"{', '.join(down)} not reachable over ssh: check `fab status` (lab: `fab lab-start HOST`)")
    p = {h: r for h, r in res.items() if isinstance(r, dict)}
    run_dir = str(node_var(cluster, "scalelab_run_dir"))
    nodir = [h for h in names if p[h].get("lock") == "nodir"]
    if nodir:
        raise UserError(missing_dir(nodir, run_dir))
    busy = [h for h in names if p[h].get("lock") != "0" or p[h].get("units")]
    if busy:
        raise UserError(f"another scalelab run is in progress on {', '.join(busy)}: wait for it to end, or stop "
                        "it with `fab abort` (one run at a time per node keeps timings fair and ports free)")
    if ds:
        missing = [h for h in names if p[h].get("dataset") != "1"]
        if missing:
            raise UserError(f"dataset {dataset} is not on {', '.join(missing)} ({ds}): run "
                            f"`fab gen-data {dataset}` then `fab put-data {dataset}`")
    mine = _prov.code_hash()
    stale = [h for h in names if p[h].get("code") != mine]
    if stale:
        raise UserError(f"the workloads on {', '.join(stale)} differ from this checkout's: run `fab sync-code` "
                        "(or `fab provision`) to ship them")
    cpus = min(int(p[h]["cpus"]) for h in names)
    if ray:
        line = str(p[cluster.master.name].get("ray") or "")
        alive = _ray_nodes(line)
        if alive is None or any(n.private_ip not in alive for n in chosen):  # the dashboard's view may lag
            alive = gcs_live_nodes(cluster) or alive
        if alive is None:
            raise UserError(f"Ray is not answering on {cluster.master.name} ({line.strip()[:200] or 'no output'}): "
                            "check `fab status`")
        missing = [n.name for n in chosen if n.private_ip not in alive]
        if missing:
            raise UserError(f"Ray has {len(alive)} live node(s); {', '.join(missing)} not among them: "
                            f"--nodes {len(chosen)} needs them (see `fab status`)")
        cpus = min(cpus, *(int(alive[n.private_ip]) for n in chosen))
        if shared:
            bad = [n.name for n in cluster.nodes if n.private_ip in alive
                   and (p.get(n.name) or {}).get("shared") != cluster.master.name]
            if bad:
                raise UserError(f"the shared directory {node_var(cluster, 'scalelab_shared_dir')} is not the "
                                f"master's on {', '.join(bad)}: run `fab provision` (it mounts it again)")
    return cpus, {h: _prov.node_facts(p[h]) for h in names}


def _ray_nodes(line: str) -> dict[str, float] | None:
    """{private address: CPUs} of the live Ray nodes from the probe's last line on the master (the head
    dashboard's view), or None where it did not answer."""
    try:
        return {ip: float(cpu) for ip, cpu in json.loads(line)}
    except (json.JSONDecodeError, TypeError, ValueError):
        return None


# --- one run: a transient systemd unit per node ---------------------------------------------------

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}")
UNIT_PREFIX = "scalelab-run-"
# Stopping a unit ends every process in its cgroup, whatever process group or session it made.
UNIT_PROPERTIES = ("KillMode=control-group", "TimeoutStopSec=10", "RuntimeDirectoryPreserve=yes")


def unit_name(run_id: str) -> str:
    """The run's systemd unit on every node; its name is its only handle (no pid is ever signalled)."""
    if not RUN_ID.fullmatch(run_id):
        raise UserError(f"run id {run_id!r}: use letters, digits, '_', '-', '.'")
    return f"{UNIT_PREFIX}{run_id}"


def _command(cluster: Cluster, wl: Workload, framework: str, nodes: int, run_id: str, dataset: str | None,
             extra: Sequence[str], timeout_s: int) -> tuple[str, str]:
    """(root shell command that runs one rank, record path on the node).

    The rank runs as the cluster user in the unit ``scalelab-run-<run id>``, holding the node's run
    lock; systemd stops it at the timeout (RuntimeMaxSec).  The shell watches its stdin (the
    controller's ssh): when the controller or its connection goes, the unit is stopped too."""
    unit = unit_name(run_id)
    out = f"/run/{unit}/record.json"
    args = ["--framework", framework, "--workers", str(nodes), "--output", out, "--run-id", run_id]
    if wl.data == "graph" and dataset:
        args += ["--input", dataset_path(cluster, dataset), "--dataset", dataset]
    if wl.data is None:
        args += ["--nodes", str(nodes)]  # the learning workloads record it
        if framework == "ray" and "--storage" not in extra:  # Train/Tune files, seen by every node
            args += ["--storage", f"{node_var(cluster, 'scalelab_shared_dir')}/ray"]
    args += list(extra)
    user = str(node_var(cluster, "scalelab_cluster_user"))
    props = [*UNIT_PROPERTIES, f"RuntimeDirectory={unit}", f"RuntimeMaxSec={int(timeout_s)}"]
    env = {"SCALELAB_NO_PROGRESS": "1"}
    if framework == "torch":
        env.update(SCALELAB_NNODES=str(nodes), SCALELAB_RDZV_ID=run_id)
        argv = [str(node_var(cluster, "scalelab_torchrun")), "-m", wl.module, *args]
    else:
        env["SCALELAB_RAY_NODES"] = str(nodes)
        props.append(f"EnvironmentFile={node_var(cluster, 'scalelab_ray_env')}")
        argv = [f"{node_var(cluster, 'scalelab_venv')}/bin/python", "-m", wl.module, *args]
    run = ["systemd-run", "--quiet", f"--unit={unit}", f"--uid={user}", f"--gid={user}", "--collect", "--wait",
           "--pipe", f"--working-directory={node_var(cluster, 'scalelab_src')}",
           *(f"--property={p}" for p in props), *(f"--setenv={k}={v}" for k, v in env.items()), "--",
           "flock", "--nonblock", "--conflict-exit-code", str(BUSY), _prov.run_lock(cluster), *argv]
    watch = (f"{{ cat <&3; systemctl stop --no-block {unit}.service; }} >/dev/null 2>&1 </dev/null & "
             "exec 3<&-; ")
    return "exec 3<&0 </dev/null; " + watch + shlex.join(run), out


SSH_RUN_OPTIONS = ("-o", "ServerAliveInterval=2",   # a node that lost power: its ssh ends within ~6 s
                   "-o", "ServerAliveCountMax=3")
RANK_GRACE_S = 10  # after one rank fails, the others get this long to end on their own before the stop


def _finish(cluster: Cluster, nodes: Sequence[Node], run_id: str) -> tuple[dict | None, dict[str, str]]:
    """On every node at once: stop the run's unit (a no-op when it ended), read the record, remove the
    run's directory.  Returns (the record, or None; {node: why it could not be cleaned})."""
    unit = unit_name(run_id)
    user = shlex.quote(str(node_var(cluster, "scalelab_cluster_user")))
    d = shlex.quote(f"/run/{unit}")
    cmd = (f"systemctl stop {unit}.service 2>/dev/null; systemctl reset-failed {unit}.service 2>/dev/null; "
           f"runuser -u {user} -- cat {d}/record.json 2>/dev/null; rm -rf {d}; true")
    res = parallel(lambda n: _prov.remote(n, cmd, root=True, timeout=40), nodes)
    rec = None
    problems = {}
    for h, r in res.items():
        if isinstance(r, Exception):
            problems[h] = str(r)
        elif rec is None and r.stdout.strip():
            try:
                rec = _results.validate(json.loads(r.stdout), f"the record on {h}")
            except json.JSONDecodeError:
                problems[h] = "the record on the node is not JSON"
            except _results.BadRecord as exc:
                problems[h] = str(exc)
    return rec, problems


def complete_record(rec: dict[str, Any], nodes: Sequence[Node], *, resources: dict[str, dict], wall: float,
                    logs: str, provenance: dict[str, Any] | None, problems: dict[str, str]) -> dict[str, Any]:
    """What the controller adds to a run's record: the nodes, their CPU/memory samples, the logs'
    directory, the provenance and what could not be cleaned up."""
    rec["nodes"] = len(nodes)
    rec.setdefault("env", {})["hosts"] = [n.name for n in nodes]
    rec["resources"] = {"interval_s": 1.0, "hosts": resources, "wall_s": round(wall, 1)}
    rec["logs"] = logs
    if provenance is not None:
        rec["provenance"] = provenance
    if problems:
        rec["cleanup_problems"] = problems
    return rec


@contextlib.contextmanager
def ctrl_c_as_event() -> Iterator[threading.Event]:
    """Inside: the first Ctrl-C only sets the event, so the run loop stops at its next check and the
    cleanup runs whole (no KeyboardInterrupt lands inside a library call half-way, e.g. the live status
    line holding its lock); a second Ctrl-C raises KeyboardInterrupt at once.  The previous handler is
    back on exit.  Off the main thread (where Python delivers no signal) the event is never set."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return

    def handler(signum: int, frame: Any) -> None:
        if hit.is_set():
            raise KeyboardInterrupt
        hit.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


def run_once(cluster: Cluster, wl: Workload, framework: str, nodes: Sequence[Node], dataset: str | None,
             extra: Sequence[str], *, results_dir: Path, timeout_s: int, say: Say,
             status: Callable[[str], None] | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Run one cell; write its record (ok or failed) under results_dir/<workload>/ and return the path.
    Ctrl-C stops the run on every node, writes its failed record and raises KeyboardInterrupt."""
    run_id = f"{wl.name}-{framework}-{len(nodes)}n-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
    logdir = results_dir / wl.name / "logs" / run_id
    logdir.mkdir(parents=True, exist_ok=True)
    cmd, _ = _command(cluster, wl, framework, len(nodes), run_id, dataset, extra, timeout_s)
    targets = list(nodes) if framework == "torch" else [cluster.master]
    sampler = Sampler({n.name: n.ssh_argv() for n in nodes}).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t0, started = time.monotonic(), time.time()
    why: str | None = None
    with ctrl_c_as_event() as ctrl_c:
        try:
            for n in targets:
                with open(logdir / f"{n.name}.log", "wb") as log:
                    # stdin stays open: its end tells the node that the controller is gone
                    procs[n.name] = subprocess.Popen([*n.ssh_argv(*SSH_RUN_OPTIONS), n.as_root(cmd)],
                                                     stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
            deadline = t0 + timeout_s + 30
            while any(p.poll() is None for p in procs.values()):
                if ctrl_c.is_set():
                    break
                if status:
                    usage = " ".join(f"{h} {c:.0f}% {m / 1024:.1f}G"
                                     for h, (c, m) in sorted(sampler.latest().items()))
                    status(f"{wl.name} · {framework} · {len(nodes)} node(s) · {time.monotonic() - t0:5.0f} s · "
                           f"{usage}")
                if time.monotonic() > deadline:
                    why = f"stopped after the {timeout_s} s timeout"
                    break
                # one rank failing: give the others a bounded time to notice, then stop them
                if any(p.poll() not in (None, 0) for p in procs.values()):
                    grace = time.monotonic() + RANK_GRACE_S
                    while (any(p.poll() is None for p in procs.values()) and time.monotonic() < grace
                           and not ctrl_c.is_set()):
                        ctrl_c.wait(0.2)
                    break
                ctrl_c.wait(0.5)
        except KeyboardInterrupt:  # the second Ctrl-C, before the loop saw the first
            ctrl_c.set()
        finally:
            if ctrl_c.is_set():
                why = "interrupted (Ctrl-C): stopped on every node"
                if status:
                    status(f"Ctrl-C: stopping {wl.name} · {framework} on every node (Ctrl-C again to leave at once)")
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                p.wait()
            resources = sampler.stop()
            # every node, not only the targets: a torch rank may have started on any of them
            rec, problems = _finish(cluster, nodes, run_id)
            if framework == "ray":
                collect_ray_logs(nodes, started, logdir)
    interrupted = ctrl_c.is_set()  # also when pressed during the cleanup of a run that had ended
    wall = time.monotonic() - t0
    codes = {h: p.returncode for h, p in procs.items()}
    failed_hosts = [h for h, c in codes.items() if c != 0]
    if failed_hosts and not why and wall >= timeout_s:  # systemd stopped the units (RuntimeMaxSec)
        why = f"stopped after the {timeout_s} s timeout"
    if rec is None or failed_hosts or why:
        base = rec or new_record(wl.name, framework if framework in ("ray", "torch", "reference") else "ray",
                                 workers=len(nodes), nodes=len(nodes), run_id=run_id)
        busy = [h for h in failed_hosts if codes[h] == BUSY]
        lost = [h for h in failed_hosts if codes[h] == 255]
        invalid = next((problems.pop(h) for h in list(problems) if problems[h].startswith("the record on")), None)
        reason = (why or (rec or {}).get("error") or invalid
                  or (f"another scalelab run took {', '.join(busy)} meanwhile" if busy else None)
                  or (f"lost the connection to {', '.join(lost)} (node down or unreachable)" if lost else None)
                  or _log_tail(logdir, failed_hosts or [t.name for t in targets]))
        codes_s = ", ".join(f"{h}={c}" for h, c in codes.items())
        rec = fail_record(base, f"{reason} (exit codes: {codes_s})" if failed_hosts or why else
                          f"no result record was written ({reason})")
    complete_record(rec, nodes, resources=resources, wall=wall, logs=str(logdir.relative_to(results_dir)),
                    provenance=provenance, problems=problems)
    path = write_record(rec, results_dir / wl.name / f"{run_id}.json")
    say(f"{'ok' if rec['status'] == 'ok' else 'FAILED'}: {wl.name} {framework} on {len(nodes)} node(s) in "
        f"{wall:.1f} s -> {path}" + ("" if rec["status"] == "ok" else f"\n  {rec['error']}"))
    if interrupted:
        raise KeyboardInterrupt
    return path


# Ray writes its worker logs under the session directory of the node's raylet (its --log_dir).
RAY_WORKER_LOGS = ("d=$(ps -eo args= | sed -n 's/.*raylet.*--log_dir=\\([^ ]*\\).*/\\1/p' | head -n1); "
                   "[ -d \"$d\" ] || exit 0; cd \"$d\" && find . -maxdepth 1 -type f \\( -name 'worker-*' "
                   "-o -name 'python-core-worker-*' \\) -newermt @{since} -print0 | tar -czf - --null -T -")


def collect_ray_logs(nodes: Sequence[Node], since: float, logdir: Path) -> dict[str, int]:
    """The Ray worker logs written on each node since `since` (epoch seconds) into logdir/ray/<node>/;
    {node: files}.  Best effort: a node that does not answer keeps its logs."""
    res = parallel(lambda n: _prov.remote(n, RAY_WORKER_LOGS.format(since=int(since) - 1), root=True,
                                          timeout=60, binary=True), nodes)
    counts = {}
    for h, r in res.items():
        if isinstance(r, Exception) or r.returncode != 0 or not r.stdout:
            continue
        dest = logdir / "ray" / h
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            tar.extractall(dest, members=members, filter="data")
        counts[h] = len(members)
    return counts


# --- leftovers: `fab runs`, `fab abort` --------------------------------------------------------------

LIST_UNITS = (f"systemctl list-units --all --plain --no-legend '{UNIT_PREFIX}*.service' 2>/dev/null "
              "| awk '{print $1, $3, $4}'")


def runs(cluster: Cluster) -> list[dict[str, str]]:
    """The scalelab run units on every node (one round trip per node)."""
    res = parallel(lambda n: _prov.remote(n, LIST_UNITS, root=True, timeout=30), cluster.nodes)
    _raise_user_errors(res)
    rows = []
    for h, r in res.items():
        if isinstance(r, Exception):
            rows.append({"host": h, "run": "?", "state": f"not reachable ({r})"})
            continue
        for line in r.stdout.splitlines():
            unit, _, state = line.partition(" ")
            if unit.startswith(UNIT_PREFIX) and unit.endswith(".service"):
                rows.append({"host": h, "run": unit[len(UNIT_PREFIX):-len(".service")], "state": state})
    return rows


def abort(cluster: Cluster, run_id: str | None = None) -> dict[str, list[str] | Exception]:
    """Stop a run (or, with no id, every scalelab run) on every node and remove its directories;
    {node: run ids stopped, or the error}.  Unit names are checked against RUN_ID before use."""
    only = unit_name(run_id) if run_id else None
    pattern = f"{only}.service" if only else f"{UNIT_PREFIX}*.service"
    cmd = (f"for u in $(systemctl list-units --all --plain --no-legend {shlex.quote(pattern)} 2>/dev/null "
           "| awk '{print $1}'); do case $u in "
           f"{UNIT_PREFIX}*.service) systemctl stop \"$u\"; systemctl reset-failed \"$u\" 2>/dev/null; "
           "echo \"$u\";; esac; done; "
           f"for d in /run/{only or UNIT_PREFIX + '*'}; do [ -d \"$d\" ] && [ ! -L \"$d\" ] && rm -rf \"$d\"; done; true")
    res = parallel(lambda n: _prov.remote(n, cmd, root=True, timeout=60), cluster.nodes)
    _raise_user_errors(res)
    out: dict[str, list[str] | Exception] = {}
    for h, r in res.items():
        if isinstance(r, Exception):
            out[h] = r
        else:
            out[h] = [u[len(UNIT_PREFIX):-len(".service")] for u in r.stdout.split()
                      if RUN_ID.fullmatch(u[len(UNIT_PREFIX):-len(".service")] or "-")]
    return out


def _log_tail(logdir: Path, hosts: Sequence[str]) -> str:
    for h in hosts:
        try:
            lines = [ln for ln in (logdir / f"{h}.log").read_text(errors="replace").splitlines() if ln.strip()]
        except FileNotFoundError:
            continue
        errs = [ln for ln in lines if ln.startswith("error:")] or lines
        if errs:
            return f"{h}: {errs[-1].strip()[:300]}"
    return "no output"




def run_experiment(cluster: Cluster, name: str, nodes: int, framework: str = "both", dataset: str | None = None,
                   repeat: int = 1, extra: Sequence[str] = (), *, results_dir: Path = _results.RESULTS_DIR,
                   timeout_s: int = 3600, say: Say = print, status: Callable[[str], None] | None = None) -> list[Path]:
    """Check, then run every (framework x repeat); return the record paths.  Raises on the first check
    that fails (nothing written); a run that fails writes its failed record and the others go on."""
    wl = workload(name)
    fws = frameworks(wl, framework)
    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, not {repeat}")
    if timeout_s < 1:
        raise UserError(f"--timeout must be at least 1 second, not {timeout_s}")
    chosen = cluster.first(nodes)
    if wl.data == "graph" and not dataset:
        raise UserError(f"{wl.name} needs --dataset NAME (tiny, test_data, data_1, data_2, data)")
    if status:
        status(f"checking {len(chosen)} node(s)")
    cpus, facts = preflight(cluster, wl, fws, chosen, dataset)
    asked = list(extra)
    if wl.data is None and "--threads" not in extra:
        # one worker per node using the node's CPUs, the same threads in every framework
        extra = [*extra, "--threads", str(max(1, cpus))]
    origin = _prov.controller(cluster)
    paths = []
    for fw in fws:
        prov = {**origin, "params_hash": _prov.params_hash(wl.name, fw, len(chosen), dataset, asked), "nodes": facts}
        for _ in range(repeat):
            paths.append(run_once(cluster, wl, fw, chosen, dataset, extra, results_dir=results_dir,
                                  timeout_s=timeout_s, say=say, status=status, provenance=prov))
    return paths


# --- the matrix --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    workload: str
    framework: str
    nodes: int
    dataset: str | None

    def label(self) -> str:
        return f"{self.workload}/{self.framework}/{self.nodes}n/{self.dataset or '-'}"


def matrix(workloads: Sequence[str], fws: str, nodes: Sequence[int], datasets: Sequence[str]) -> list[Cell]:
    cells = []
    for name in workloads:
        wl = workload(name)
        for fw in frameworks(wl, fws) if fws != "all" else list(wl.frameworks):
            for n in nodes:
                for ds in (datasets if wl.data == "graph" else [None]):
                    cells.append(Cell(wl.name, fw, int(n), ds))
    return cells




def completed(results_dir: Path, cell: Cell, inventory_hash: str | None = None) -> list[dict]:
    """ok records of this cell already on disk, made on this inventory with the same parameters (what
    makes the matrix resumable)."""
    recs, _ = _results.load_records(results_dir, [cell.workload])
    want = _prov.params_hash(cell.workload, cell.framework, cell.nodes, cell.dataset, [])
    out = []
    for r in recs:
        prov = r.get("provenance") or {}
        if (r["status"] == "ok" and prov.get("params_hash") == want
                and (inventory_hash is None or (prov.get("inventory") or {}).get("hash") == inventory_hash)):
            out.append(r)
    return out


def _failed_cell(cluster: Cluster, cell: Cell, error: str, results_dir: Path) -> Path:
    """The record of a cell that could not start (a node down, a check that failed)."""
    rec = fail_record(new_record(cell.workload, cell.framework, workers=cell.nodes, nodes=cell.nodes,
                                 dataset={"name": cell.dataset, "uri": None, "bytes": None, "records": None}),
                      error)
    rec["provenance"] = {**_prov.controller(cluster),
                         "params_hash": _prov.params_hash(cell.workload, cell.framework, cell.nodes, cell.dataset, [])}
    return write_record(rec, results_dir / cell.workload / f"{rec['run_id']}.json")


def run_matrix(cluster: Cluster, cells: Sequence[Cell], repeat: int = 1, *, results_dir: Path = _results.RESULTS_DIR,
               timeout_s: int = 3600, say: Say = print, status: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run every cell `repeat` times, skipping runs already recorded ok on this inventory with the same
    parameters; a cell that cannot run or fails is recorded failed and the matrix goes on."""
    if not cells:
        raise UserError("the matrix is empty: give --workloads, --nodes and (for graph workloads) --datasets")
    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, not {repeat}")
    biggest = max(c.nodes for c in cells)
    cluster.first(biggest)  # fails now, in one line, if the matrix asks for more nodes than exist
    inv = _prov.inventory_id(cluster)["hash"]
    todo = [(c, repeat - len(completed(results_dir, c, inv))) for c in cells]
    total = sum(max(0, k) for _, k in todo)
    say(f"matrix: {len(cells)} cells, {total} runs to do "
        f"({len(cells) * repeat - total} already recorded ok and skipped)")
    done = failed = 0
    spent = 0.0
    for cell, k in todo:
        for _ in range(max(0, k)):
            eta = f", ~{spent / done * (total - done) / 60:.0f} min left" if done else ""
            say(f"[{done + 1}/{total}{eta}] {cell.label()}")
            t0 = time.monotonic()
            try:
                (path,) = run_experiment(cluster, cell.workload, cell.nodes, cell.framework, cell.dataset,
                                         results_dir=results_dir, timeout_s=timeout_s, say=say, status=status)
                ok = json.loads(path.read_text())["status"] == "ok"
            except (UserError, RuntimeError, OSError) as exc:
                path = _failed_cell(cluster, cell, str(exc), results_dir)
                say(f"  FAILED: {exc} -> {path}")
                ok = False
            spent += time.monotonic() - t0
            done += 1
            failed += 0 if ok else 1
    return {"runs": done, "failed": failed, "skipped_done": len(cells) * repeat - total}
