"""`fab run-experiment`: run a workload on N nodes of the running cluster and collect its record.

Checks first, in seconds: N against the hosts (and, for Ray, the live Ray nodes), the dataset on the
nodes, the services.  Ray runs as a driver on the master against the running cluster, its workers
placed one per node (STRICT_SPREAD placement group, see workloads._dist), without touching Ray on the
other nodes.  torch runs torchrun on the N hosts at once over ssh through the node launcher.  While it
runs, a live line shows the elapsed time and every node's CPU and memory; at the end the record and
the logs land in ``results/<workload>/`` with the run's environment and resource use.  A failure
exits non-zero with a ``failed`` record; a partial result is never marked ok.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scalelab import results as _results
from scalelab.cluster import NO_DIR, missing_dir, ray_env, require_dir
from scalelab.errors import UserError
from scalelab.inventory import Cluster, Node, node_var, parallel
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


# --- checks ------------------------------------------------------------------------------------

def check_reachable(cluster: Cluster, nodes: Sequence[Node]) -> int:
    """Every node answers over ssh; returns the fewest CPUs any of them has."""
    res = parallel(lambda n: cluster.ssh(n, "nproc", timeout=15), nodes)
    down = [name for name, r in res.items() if isinstance(r, Exception)]
    if down:
        raise UserError(f"{', '.join(down)} not reachable over ssh: check `fab status` (lab: `fab lab-start HOST`)")
    return min(int(r.stdout.split()[0]) for r in res.values())


def check_dataset(cluster: Cluster, nodes: Sequence[Node], name: str) -> None:
    path = dataset_path(cluster, name)
    res = parallel(lambda n: cluster.ssh(n, f"test -s {shlex.quote(path)}", timeout=15, check=False), nodes)
    missing = [h for h, r in res.items() if isinstance(r, Exception) or r.returncode != 0]
    if missing:
        raise UserError(f"dataset {name} is not on {', '.join(missing)} ({path}): run "
                        f"`fab gen-data {name}` then `fab put-data {name}`")


def _raise_user_errors(results: dict) -> None:
    """A per-node UserError (sudo wants a password) is the user's to fix: raise the first one."""
    for r in results.values():
        if isinstance(r, UserError):
            raise r


BUSY = 75  # exit code of a run that found the node's run lock taken (EX_TEMPFAIL)


def _lock(cluster: Cluster) -> str:
    """One run at a time per node: runs at once would share ports (torchrun's rendezvous) and CPUs."""
    return shlex.quote(f"{node_var(cluster, 'scalelab_run_dir')}/.run.lock")


def check_idle(cluster: Cluster, nodes: Sequence[Node]) -> None:
    run_dir = str(node_var(cluster, "scalelab_run_dir"))
    cmd = require_dir(run_dir) + f"flock --nonblock --conflict-exit-code {BUSY} {_lock(cluster)} true"
    res = parallel(lambda n: cluster.ssh(n, cmd, timeout=15, check=False, root=True), nodes)
    _raise_user_errors(res)
    missing = [h for h, r in res.items() if not isinstance(r, Exception) and r.returncode == NO_DIR]
    if missing:
        raise UserError(missing_dir(missing, run_dir))
    busy = [h for h, r in res.items() if not isinstance(r, Exception) and r.returncode == BUSY]
    if busy:
        raise UserError(f"another scalelab run is in progress on {', '.join(busy)}: wait for it to end "
                        "(one run at a time per node keeps timings fair and ports free)")


def check_shared(cluster: Cluster, nodes: Sequence[Node]) -> None:
    """Ray Train/Tune write checkpoints to the shared directory from any node: it must be the master's
    everywhere (its marker, role shared_storage), never a node's empty mount point."""
    marker = shlex.quote(f"{node_var(cluster, 'scalelab_shared_dir')}/.scalelab-shared")
    res = parallel(lambda n: cluster.ssh(n, f"cat {marker}", timeout=30, check=False, root=True), nodes)
    _raise_user_errors(res)
    bad = [h for h, r in res.items() if isinstance(r, Exception) or r.stdout.strip() != cluster.master.name]
    if bad:
        raise UserError(f"the shared directory {node_var(cluster, 'scalelab_shared_dir')} is not the master's on "
                        f"{', '.join(bad)}: run `fab provision` (it mounts it again)")


RAY_NODES = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
             "print(json.dumps([[n['NodeManagerAddress'], n['Resources'].get('CPU', 0)] "
             "for n in ray.nodes() if n['Alive']]))")


def _ray_prefix(cluster: Cluster) -> str:
    return f"{ray_env(cluster)}cd {shlex.quote(str(node_var(cluster, 'scalelab_src')))} && "


def ray_alive_nodes(cluster: Cluster) -> list[tuple[str, float]]:
    py = f"{node_var(cluster, 'scalelab_venv')}/bin/python"
    proc = cluster.ssh(cluster.master, _ray_prefix(cluster) + f"{py} -c {shlex.quote(RAY_NODES)}",
                       timeout=60, check=False, root=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"Ray is not answering on {cluster.master.name} ({tail}): check `fab status`")
    return [(ip, float(cpu)) for ip, cpu in json.loads(proc.stdout.strip().splitlines()[-1])]


def check_ray(cluster: Cluster, nodes: Sequence[Node]) -> dict[str, float]:
    """The chosen nodes are live Ray nodes; returns {private address: CPUs} of every live Ray node."""
    alive = dict(ray_alive_nodes(cluster))
    missing = [n.name for n in nodes if n.private_ip not in alive]
    if missing:
        raise UserError(f"Ray has {len(alive)} live node(s); {', '.join(missing)} not among them: "
                        f"--nodes {len(nodes)} needs them (see `fab status`)")
    return alive


# --- one run -----------------------------------------------------------------------------------

def _command(cluster: Cluster, wl: Workload, framework: str, nodes: int, run_id: str, dataset: str | None,
             extra: Sequence[str], timeout_s: int) -> tuple[str, str]:
    """(remote command, remote record path)."""
    run_dir = node_var(cluster, "scalelab_run_dir")
    out = f"{run_dir}/{run_id}.json"
    args = ["--framework", framework, "--workers", str(nodes), "--output", out, "--run-id", run_id]
    if wl.data == "graph" and dataset:
        args += ["--input", dataset_path(cluster, dataset), "--dataset", dataset]
    if wl.data is None:
        args += ["--nodes", str(nodes)]  # the learning workloads record it
        if framework == "ray" and "--storage" not in extra:  # Train/Tune files, seen by every node
            args += ["--storage", f"{node_var(cluster, 'scalelab_shared_dir')}/ray"]
    args += list(extra)
    # The command runs as root in a process group of its own (Node.as_root(own_group=True)): its PID,
    # written first, names the group that abort() ends if the run has to be stopped.
    user = shlex.quote(str(node_var(cluster, "scalelab_cluster_user")))
    pidfile = shlex.quote(f"{run_dir}/{run_id}.pgid")
    mk = f"echo $$ > {pidfile} && "
    limit = (f"exec flock --nonblock --conflict-exit-code {BUSY} {_lock(cluster)} "
             f"timeout --kill-after=15 {int(timeout_s)} ")
    if framework == "torch":
        launcher = node_var(cluster, "scalelab_torchrun")
        src = node_var(cluster, "scalelab_src")
        env = f"SCALELAB_NNODES={nodes} SCALELAB_RDZV_ID={run_id} SCALELAB_NO_PROGRESS=1 "
        return (mk + f"cd {shlex.quote(src)} && " + env + limit
                + shlex.join([launcher, "-m", wl.module, *args]), out)
    py = f"{node_var(cluster, 'scalelab_venv')}/bin/python"
    env = f"SCALELAB_RAY_NODES={nodes} SCALELAB_NO_PROGRESS=1 "
    # The driver runs as the user the Ray cluster runs as (setpriv execs, the process group stays):
    # files it makes in the shared storage and caches are the workers' to read and write.
    as_user = (f"setpriv --reuid={user} --regid={user} --init-groups "
               f"env HOME=\"$(getent passwd {user} | cut -d: -f6)\" ")
    return mk + _ray_prefix(cluster) + env + limit + as_user + shlex.join([py, "-m", wl.module, *args]), out


def _fetch_record(cluster: Cluster, nodes: Sequence[Node], path: str) -> dict | None:
    """The record written by the run (torch's rank 0 may sit on any node)."""
    for n in nodes:
        proc = cluster.ssh(n, f"cat {shlex.quote(path)} 2>/dev/null", timeout=30, check=False, root=True)
        if proc.returncode == 0 and proc.stdout.strip():
            try:
                return json.loads(proc.stdout)
            except json.JSONDecodeError:
                return None
    return None


def run_once(cluster: Cluster, wl: Workload, framework: str, nodes: Sequence[Node], dataset: str | None,
             extra: Sequence[str], *, results_dir: Path, timeout_s: int, say: Say,
             status: Callable[[str], None] | None = None) -> Path:
    """Run one cell; write its record (ok or failed) under results_dir/<workload>/ and return the path."""
    run_id = f"{wl.name}-{framework}-{len(nodes)}n-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
    logdir = results_dir / wl.name / "logs" / run_id
    logdir.mkdir(parents=True, exist_ok=True)
    cmd, remote_out = _command(cluster, wl, framework, len(nodes), run_id, dataset, extra, timeout_s)
    targets = list(nodes) if framework == "torch" else [cluster.master]
    sampler = Sampler({n.name: n.ssh_argv() for n in nodes}).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t0 = time.monotonic()
    stopped = False
    try:
        for n in targets:
            log = open(logdir / f"{n.name}.log", "wb")
            procs[n.name] = subprocess.Popen([*n.ssh_argv(), n.as_root(cmd, own_group=True)],
                                             stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)
            log.close()
        deadline = t0 + timeout_s + 60
        while any(p.poll() is None for p in procs.values()):
            if status:
                usage = " ".join(f"{h} {c:.0f}% {m / 1024:.1f}G" for h, (c, m) in sorted(sampler.latest().items()))
                status(f"{wl.name} · {framework} · {len(nodes)} node(s) · {time.monotonic() - t0:5.0f} s · {usage}")
            if time.monotonic() > deadline:
                stopped = True
                break
            # one rank failing: give the others a bounded time to notice, then stop them
            if any(p.poll() not in (None, 0) for p in procs.values()):
                grace = time.monotonic() + 120
                while any(p.poll() is None for p in procs.values()) and time.monotonic() < grace:
                    time.sleep(0.5)
                stopped = True
                break
            time.sleep(0.5)
    finally:
        stopped = stopped or any(p.poll() is None for p in procs.values())
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        resources = sampler.stop()
        _abort(cluster, targets, run_id, hard=stopped)
    wall = time.monotonic() - t0
    codes = {h: p.returncode for h, p in procs.items()}
    rec = _fetch_record(cluster, nodes, remote_out)
    failed_hosts = [h for h, c in codes.items() if c != 0]
    if rec is None or failed_hosts:
        base = rec or new_record(wl.name, framework if framework in ("ray", "torch", "reference") else "ray",
                                 workers=len(nodes), nodes=len(nodes), run_id=run_id)
        busy = [h for h in failed_hosts if codes[h] == BUSY]
        reason = ((rec or {}).get("error")
                  or (f"another scalelab run took {', '.join(busy)} meanwhile" if busy else None)
                  or _log_tail(logdir, failed_hosts or [t.name for t in targets]))
        codes_s = ", ".join(f"{h}={c}" for h, c in codes.items())
        rec = fail_record(base, f"{reason} (exit codes: {codes_s})" if failed_hosts else
                          f"no result record was written ({reason})")
    rec["nodes"] = len(nodes)
    rec.setdefault("env", {})["hosts"] = [n.name for n in nodes]
    rec["resources"] = {"interval_s": 1.0, "hosts": resources, "wall_s": round(wall, 1)}
    rec["logs"] = str(logdir.relative_to(results_dir))
    path = write_record(rec, results_dir / wl.name / f"{run_id}.json")
    say(f"{'ok' if rec['status'] == 'ok' else 'FAILED'}: {wl.name} {framework} on {len(nodes)} node(s) in "
        f"{wall:.1f} s -> {path}" + ("" if rec["status"] == "ok" else f"\n  {rec['error']}"))
    return path


def _abort(cluster: Cluster, nodes: Sequence[Node], run_id: str, hard: bool) -> None:
    """End what is left of the run on the nodes (its process groups, by PID) and drop the pid files."""
    pidfile = shlex.quote(f"{node_var(cluster, 'scalelab_run_dir')}/{run_id}.pgid")
    kill = (f"p=$(cat {pidfile} 2>/dev/null) && kill -TERM -- -$p 2>/dev/null; sleep 2; "
            f"kill -KILL -- -$p 2>/dev/null; " if hard else "")
    parallel(lambda n: cluster.ssh(n, f"{kill}rm -f {pidfile}; true", timeout=30, check=False, root=True), nodes)


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
    chosen = cluster.first(nodes)
    if wl.data == "graph" and not dataset:
        raise UserError(f"{wl.name} needs --dataset NAME (tiny, test_data, data_1, data_2, data)")
    cpus = check_reachable(cluster, chosen)
    check_idle(cluster, chosen)
    if wl.data == "graph":
        check_dataset(cluster, chosen, str(dataset))
    if "ray" in fws:
        alive = check_ray(cluster, chosen)
        cpus = min(cpus, *(int(alive[n.private_ip]) for n in chosen))
        if wl.data is None:  # Ray may place Train workers and Tune trials on any live node
            check_shared(cluster, [n for n in cluster.nodes if n.private_ip in alive])
    if wl.data is None and "--threads" not in extra:
        # one worker per node using the node's CPUs, the same threads in every framework
        extra = [*extra, "--threads", str(max(1, cpus))]
    paths = []
    for fw in fws:
        for _ in range(repeat):
            paths.append(run_once(cluster, wl, fw, chosen, dataset, extra, results_dir=results_dir,
                                  timeout_s=timeout_s, say=say, status=status))
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


def completed(results_dir: Path, cell: Cell) -> list[dict]:
    """ok records of this cell already on disk (what makes the matrix resumable)."""
    recs, _ = _results.load_records(results_dir, [cell.workload])
    return [r for r in recs if r["status"] == "ok" and r["framework"] == cell.framework
            and int(r["nodes"]) == cell.nodes
            and (cell.dataset is None or _results.dataset_name(r) == cell.dataset)]


def run_matrix(cluster: Cluster, cells: Sequence[Cell], repeat: int = 1, *, results_dir: Path = _results.RESULTS_DIR,
               timeout_s: int = 3600, say: Say = print, status: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run every cell `repeat` times, skipping runs already recorded ok; show progress and time left."""
    if not cells:
        raise UserError("the matrix is empty: give --workloads, --nodes and (for graph workloads) --datasets")
    biggest = max(c.nodes for c in cells)
    cluster.first(biggest)  # fails now, in one line, if the matrix asks for more nodes than exist
    todo = [(c, repeat - len(completed(results_dir, c))) for c in cells]
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
            except UserError as exc:
                say(f"  skipped: {exc}")
                ok = False
            spent += time.monotonic() - t0
            done += 1
            failed += 0 if ok else 1
    return {"runs": done, "failed": failed, "skipped_done": len(cells) * repeat - total}
