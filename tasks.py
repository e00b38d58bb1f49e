"""scalelab's command line: `fab --list`.  Tasks are thin: parse options, call into `scalelab`."""
from __future__ import annotations

import time

from invoke import Collection, task

from scalelab import lab as _lab
from scalelab import labspec as _labspec
from scalelab.cli import console, table, user_errors
from scalelab.errors import UserError

LAB_HELP = "lab inventory directory (default: inventory/lab)"


def _spec(inventory=None, workers=None):
    from pathlib import Path

    from scalelab.cli import REPO_ROOT
    inv = Path(inventory) if inventory else REPO_ROOT / "inventory" / "lab"
    return _labspec.load_spec(inv.resolve(), workers=None if workers is None else int(workers))


def _bring_up(spec, rebuild_base=False):
    t0 = time.monotonic()
    state = _lab.up(spec, say=console.print, rebuild_base=rebuild_base)
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))
    console.print(f"lab up in {time.monotonic() - t0:.1f} s (base {state['base_seconds']} s); "
                  f"inventory: {spec.hosts_file}")


@task(help={"workers": "number of worker hosts besides the master (default: the running lab's, else "
                       "lab.yml's); more than the running lab has adds hosts to it",
            "rebuild_base": "rebuild the cached Debian base first (the lab must be down)", "inventory": LAB_HELP})
@user_errors
def lab_up(c, workers=None, rebuild_base=False, inventory=None):
    """Bring up the local lab: a master and N workers as systemd-nspawn hosts (needs root)."""
    spec = _spec(inventory, workers) if workers is not None else _lab.spec_from_state(_spec(inventory))
    _bring_up(spec, rebuild_base=bool(rebuild_base))


@task(help={"inventory": LAB_HELP})
@user_errors
def lab_add_worker(c, inventory=None):
    """Add one worker host to the running lab (then `fab provision` takes it into the cluster)."""
    spec = _lab.spec_from_state(_spec(inventory))
    if not _lab.load_state(spec):
        raise UserError("the lab is not up: run `fab lab-up`")
    _bring_up(_spec(inventory, spec.workers + 1))
    console.print(f"worker{spec.workers + 1} added: run `fab provision` to take it into the cluster")


@task(help={"keep_disks": "keep the hosts' disks (default: remove them)", "inventory": LAB_HELP})
@user_errors
def lab_down(c, keep_disks=False, inventory=None):
    """Stop the lab and remove its hosts, bridges, routes, firewall chains and mounts."""
    spec = _spec(inventory)
    _lab.down(spec, say=console.print, keep_disks=keep_disks)
    console.print("lab down")


@task(help={"inventory": LAB_HELP})
@user_errors
def lab_status(c, inventory=None):
    """Show the lab's hosts: running or not, addresses, ssh."""
    spec = _spec(inventory)
    console.print(table(_lab.status(spec), title=f"lab {spec.name}"))


@task(help={"host": "lab host to cut the power of (master, worker1, ...)", "inventory": LAB_HELP})
@user_errors
def lab_kill(c, host, inventory=None):
    """Power-cut a lab host: all its processes die at once; its disk stays."""
    _lab.kill(_spec(inventory), host)
    console.print(f"{host} killed")


@task(help={"host": "lab host to boot again", "inventory": LAB_HELP})
@user_errors
def lab_start(c, host, inventory=None):
    """Boot a stopped lab host again, with its disk as it was."""
    t0 = time.monotonic()
    _lab.start(_spec(inventory), host, say=console.print)
    console.print(f"{host} up in {time.monotonic() - t0:.1f} s")


@task(help={"results": "results directory (default: results/)", "out": "output directory (default: reports/latest)"})
@user_errors
def report(c, results=None, out=None):
    """Build the Markdown + HTML report with tables and figures from the recorded results."""
    from pathlib import Path

    from scalelab import report as _report
    from scalelab import results as _results
    paths = _report.build(Path(results) if results else _results.RESULTS_DIR, Path(out) if out else None)
    console.print(f"report: {paths['html']}\n        {paths['markdown']}")


def _cluster(inventory=None):
    from scalelab import inventory as _inventory
    from scalelab.cli import inventory_path
    return _inventory.load(inventory_path(inventory))


@task(help={"workload": "pagerank, kmeans, pneumonia, xgboost or cifar-pbt",
            "nodes": "how many nodes: the master and the first N-1 workers",
            "framework": "ray, torch, reference or both (default: both that apply)",
            "dataset": "dataset name for graph workloads (tiny, test_data, data_1, data_2, data)",
            "repeat": "runs per framework (default 1)", "inventory": "inventory (default: inventory/lab)",
            "args": "extra workload options, quoted: --args '--damping 0.95 --max-iter 20'",
            "timeout": "seconds a run may take before it is stopped and recorded failed (default 3600)"})
@user_errors
def run_experiment(c, workload, nodes, framework="both", dataset=None, repeat="1", inventory=None, args="",
                   timeout="3600"):
    """Run WORKLOAD on N nodes of the cluster; records and logs land in results/<workload>/."""
    import sys

    from scalelab import runner
    from scalelab.cli import int_option, say, split_args
    n, rep, secs, extra = (int_option("nodes", nodes), int_option("repeat", repeat),
                           int_option("timeout", timeout), split_args(args))
    cl = _cluster(inventory)
    with console.status("starting") as st:
        paths = runner.run_experiment(cl, workload, n, framework, dataset, rep, extra, timeout_s=secs,
                                      say=say, status=st.update)
    rows = [_row(p) for p in paths]
    console.print(table(rows, title=f"{workload} on {n} node(s)"))
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


def _row(path):
    import json
    r = json.loads(path.read_text())
    t = r.get("timings_s") or {}
    v = r.get("verification") or {}
    return {"run": r["run_id"], "framework": r["framework"], "nodes": r["nodes"], "status": r["status"],
            "total_s": f"{t['total']:.2f}" if t.get("total") is not None else "-",
            "verified": "-" if not v else ("pass" if v.get("passed") else "FAIL")}


@task(help={"workloads": "comma-separated workloads (default: pagerank,kmeans)",
            "frameworks": "ray, torch, both or all (default: both)", "nodes": "comma-separated node counts (default 1,2,3)",
            "datasets": "comma-separated datasets for graph workloads (default: tiny)", "repeat": "runs per cell",
            "inventory": "inventory (default: inventory/lab)", "timeout": "seconds per run"})
@user_errors
def run_matrix(c, workloads="pagerank,kmeans", frameworks="both", nodes="1,2,3", datasets="tiny", repeat="1",
               inventory=None, timeout="3600"):
    """Run workloads x frameworks x node counts x datasets x repeats; resumable (recorded cells are skipped)."""
    import sys

    from scalelab import runner
    from scalelab.cli import int_list, int_option, name_list, say
    cells = runner.matrix(name_list("workloads", workloads), frameworks, int_list("nodes", nodes),
                          name_list("datasets", datasets))
    rep, secs = int_option("repeat", repeat), int_option("timeout", timeout)
    cl = _cluster(inventory)
    with console.status("matrix") as st:
        out = runner.run_matrix(cl, cells, rep, timeout_s=secs, say=say, status=st.update)
    console.print(f"matrix done: {out['runs']} runs, {out['failed']} failed, {out['skipped_done']} already done; "
                  "`fab report` builds the report")
    if out["failed"]:
        sys.exit(1)


@task(help={"inventory": "inventory (default: inventory/lab)"})
@user_errors
def runs(c, inventory=None):
    """List the scalelab runs on every node (running, or left over by a controller that went away)."""
    from scalelab import runner
    rows = runner.runs(_cluster(inventory))
    console.print(table(rows, title="runs", columns=["host", "run", "state"]) if rows else "no scalelab run on any node")


@task(help={"run": "the run id to stop (default: every scalelab run)", "inventory": "inventory (default: inventory/lab)"})
@user_errors
def abort(c, run=None, inventory=None):
    """Stop a run (default: every scalelab run) on every node: all its processes, its lock, its files."""
    import sys

    from scalelab import runner
    out = runner.abort(_cluster(inventory), run)
    bad = False
    for host, r in out.items():
        if isinstance(r, Exception):
            bad = True
            console.print(f"{host}: not reachable ({r})", markup=False)
        else:
            console.print(f"{host}: stopped {', '.join(r)}" if r else f"{host}: nothing running", markup=False)
    if bad:
        sys.exit(1)


@task(help={"inventory": "inventory (default: inventory/lab)"})
@user_errors
def sync_code(c, inventory=None):
    """Ship this checkout's workloads to every node in seconds (no provision); prints their hash."""
    from scalelab import cluster
    from scalelab.cli import say
    cluster.sync_code(_cluster(inventory), say=say)


@task(help={"name": "tiny, test_data, data_1, data_2 or data", "from_snap": "cut the real SNAP Friendster file",
            "out": "output directory (default: data/)"})
@user_errors
def gen_data(c, name, from_snap=None, out=None):
    """Generate a dataset on the controller (synthetic Friendster-like, or cut from the SNAP file)."""
    from pathlib import Path

    from scalelab.cli import REPO_ROOT
    from workloads import data
    path = data.generate(name, Path(out) if out else REPO_ROOT / "data", from_snap=from_snap)
    console.print(f"{name}: {path}")


ns = Collection(run_experiment, run_matrix, runs, abort, sync_code, gen_data, report, lab_up, lab_add_worker,
                lab_down, lab_status, lab_kill, lab_start)



# --- records: compare and export (scalelab/compare.py, scalelab/export.py) --------------------------
@task(help={"a": "a record file, a run id, or a set of runs: a framework (ray, torch, reference), a cluster "
                 "(the inventory's name) or a commit of this project (hex prefix)",
            "b": "the other side, as A (ratios are B/A)", "workload": "narrow the sets to this workload",
            "dataset": "narrow the sets to this dataset", "nodes": "narrow the sets to this node count",
            "framework": "narrow cluster or commit sets to this framework",
            "results": "results directory (default: results/)"})
@user_errors
def compare(c, a, b, workload=None, dataset=None, nodes=None, framework=None, results=None):
    """Compare two runs or two sets of runs: times per step, metrics and verification side by side, B/A."""
    from pathlib import Path

    from scalelab import compare as _compare
    from scalelab import results as _results
    from scalelab.cli import int_option
    cmp = _compare.run(a, b, results_dir=Path(results) if results else _results.RESULTS_DIR, workload=workload,
                       dataset=dataset, nodes=None if nodes is None else int_option("nodes", nodes),
                       framework=framework)
    console.print(f"A: {cmp.a.describe()}\nB: {cmp.b.describe()}", markup=False, highlight=False)
    for title, rows in (("time per step (s)", cmp.times), ("metrics", cmp.metrics),
                        ("verification", cmp.verification)):
        if rows:
            console.print(table(rows, title=title))
    notes = list(cmp.notes)
    if not any(n.startswith("not comparable") for n in notes):  # (`note:` lines are context, never a refusal)
        notes.append("comparable: same workload, dataset, parameters, iterations, convergence and cluster")
    for note in notes:
        console.print(note, markup=False, highlight=False, style="yellow" if note.startswith("not") else None)


@task(help={"format": "csv or parquet", "out": "output file (default: reports/records.FORMAT)",
            "results": "results directory (default: results/)"})
@user_errors
def export(c, format="csv", out=None, results=None):
    """Every record under results/ as one CSV or Parquet table (one row per run), for pandas."""
    from pathlib import Path

    from scalelab import export as _export
    from scalelab import results as _results
    from scalelab.cli import err_console
    path, n, skipped = _export.export(format, Path(out) if out else None,
                                      Path(results) if results else _results.RESULTS_DIR)
    for line in skipped:
        err_console.print(f"skipped: {line}", markup=False, highlight=False)
    console.print(f"export: {n} records -> {path}", markup=False, highlight=False)


ns.add_task(compare)
ns.add_task(export)

# --- cluster services (scalelab/cluster.py) ---------------------------------------------------------
INV_HELP = "inventory directory (default: $SCALELAB_INVENTORY or inventory/lab)"


@task(help={"inventory": INV_HELP, "tags": "only these tags (ansible-playbook --tags)",
            "limit": "only these hosts (ansible-playbook --limit)"})
@user_errors
def provision(c, inventory=None, tags=None, limit=None):
    """Provision the cluster: ansible-playbook site.yml -i INVENTORY."""
    import sys

    from scalelab import cluster
    from scalelab.cli import inventory_path
    extra = (["--tags", tags] if tags else []) + (["--limit", limit] if limit else [])
    rc = cluster.provision(inventory_path(inventory), extra)
    if rc:
        sys.exit(rc)


@task(help={"inventory": INV_HELP, "json": "print one JSON object (hosts, ray, hdfs, yarn, ok) for scripts"})
@user_errors
def status(c, inventory=None, json=False):
    """Hosts up, failed units; Ray, HDFS and YARN from their own JSON (ray.nodes(), NameNode JMX, RM REST)."""
    import json as _json
    import sys

    from scalelab import cluster
    from scalelab.cli import inventory_path
    st = cluster.status(inventory_path(inventory))
    if json:
        print(_json.dumps(st, default=str))
    else:
        console.print(table(st["hosts"], title="hosts"))
        for line in st["lines"]:
            console.print(line, highlight=False)
    if not st["ok"]:
        sys.exit(1)


@task(help={"inventory": INV_HELP, "port": "local port (default 8265)"})
@user_errors
def dashboard(c, inventory=None, port=8265):
    """Ray dashboard on http://localhost:PORT through an SSH tunnel to the master (Ctrl-C ends it)."""
    import subprocess

    from scalelab import cluster
    from scalelab import inventory as inv
    from scalelab.cli import inventory_path
    path = inventory_path(inventory)
    cl = inv.load(path)
    console.print(f"dashboard: http://localhost:{port}  (token: {cluster.token_file(path)}); Ctrl-C to close")
    try:
        subprocess.run(cluster.dashboard_argv(cl, int(port)), check=False)
    except KeyboardInterrupt:
        pass


@task(help={"name": "dataset name (data/NAME.csv on the controller)", "inventory": INV_HELP})
@user_errors
def put_data(c, name, inventory=None):
    """Put a dataset on the cluster: the same local path on every node (what run-experiment reads), and HDFS /data too when HDFS runs."""
    from scalelab import cluster
    from scalelab.cli import inventory_path
    out = cluster.put_data(inventory_path(inventory), name, say=console.print)
    console.print(f"{name}: {out['uri']}" + (f" and {out['hdfs_uri']}" if "hdfs_uri" in out else ""))


ns.add_task(provision)
ns.add_task(status)
ns.add_task(dashboard)
ns.add_task(put_data)


@task(help={"inventory": "lab inventory (default: inventory/lab)", "nodes": "nodes per experiment (default 2)"})
@user_errors
def demo(c, inventory=None, nodes=2):
    """Lab up, provision, datasets, PageRank and k-means on Ray and torch, report: prints the comparison."""
    import time

    from scalelab import demo as _demo
    from scalelab.cli import inventory_path
    t0 = time.monotonic()
    with console.status("demo") as st:
        tbl, out, steps, bad = _demo.run(inventory_path(inventory), say=console.print, status=st.update,
                                         nodes=int(nodes))
    console.print(tbl)
    console.print("steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
                  + f"; total {time.monotonic() - t0:.0f}")
    console.print(f"report: {out['html']}\n        {out['markdown']}")
    if bad:
        raise UserError(f"{len(bad)} demo run(s) failed or did not pass verification: {'; '.join(bad)}")


ns.add_task(demo)
