"""`make bench-provision`: how long site.yml takes on 3 fresh lab hosts, as the login user, and again with
nothing to change (root: it brings up a lab of its own, `slbench` on 10.75.x, and always takes it down).

    .venv/bin/python -m bench.provision_bench [--workers 2] [--keep]

The wheelhouse is warmed first (built once per lock on the controller), so the cold run measures the
provisioning itself.  Then the pre-run checks of a run on every node.  Prints a table beside the targets
(cold <= 180 s, re-run <= 45 s, checks < 1 s) and
writes results/bench/provision.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from scalelab import lab, labspec, runner, wheelhouse
from scalelab.cli import console, table
from workloads import data

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"cold": 180.0, "rerun": 45.0, "checks": 1.0}


SLOWEST = re.compile(r"^(\S.*?) -{3,} (\d+\.\d+)s$", re.M)  # profile_tasks' summary lines


def slowest_tasks(stdout: str) -> list[dict[str, object]]:
    """The slowest tasks of a run, from the profile_tasks callback's summary (ansible.cfg enables it)."""
    return [{"task": m.group(1), "seconds": float(m.group(2))} for m in SLOWEST.finditer(stdout)]


def playbook(inventory: Path) -> tuple[float, dict[str, int], list[dict[str, object]]]:
    """One site.yml run: (seconds, changed tasks per host, its slowest tasks); exits with the output's
    tail if it failed."""
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "site.yml", "-i", str(inventory)],
                          cwd=REPO, capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit("error: site.yml failed:\n" + "\n".join(proc.stdout.splitlines()[-30:]))
    changed = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:.*?changed=(\d+)", proc.stdout, re.M)}
    return took, changed, slowest_tasks(proc.stdout)


CHECK_DATASET = "tiny"


def prerun_checks(inventory: Path, times: int = 5) -> list[float]:
    """Seconds of the checks before a PageRank run in both runtimes on every node (reachable, idle,
    dataset, code, Ray's live nodes): one probe per node over the reused ssh connection."""
    cluster = _inventory.load(inventory)
    _cluster.put_data(inventory, CHECK_DATASET, say=lambda m: None)
    wl = runner.workload("pagerank")
    took = []
    for _ in range(times + 1):  # the first opens the ssh master connections: not counted
        t0 = time.monotonic()
        runner.preflight(cluster, wl, ["ray", "torch"], cluster.nodes, CHECK_DATASET)
        took.append(time.monotonic() - t0)
    return took[1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="workers besides the master (default 2)")
    ap.add_argument("--keep", action="store_true", help="leave the lab up afterwards (fab lab-down --inventory ...)")
    args = ap.parse_args(argv)
    wheelhouse.build()  # warm: built once per lock, as before any provision
    if not (REPO / "data" / f"{CHECK_DATASET}.csv").is_file():  # the checks' dataset, before any lab time
        data.generate(CHECK_DATASET, REPO / "data")
    inv = labspec.derive_inventory(Path(tempfile.mkdtemp(prefix="slbench-")) / "lab", "slbench", 75, args.workers)
    spec = labspec.load_spec(inv)
    rows: list[dict[str, object]] = []
    slow_cold: list[dict[str, object]] = []
    slow_rerun: list[dict[str, object]] = []
    try:  # each row as soon as it is measured: a later step that fails does not lose it
        t0 = time.monotonic()
        lab.up(spec, say=console.print)
        rows.append({"step": "lab up", "seconds": round(time.monotonic() - t0, 1), "target": "-", "changed": "-"})
        cold, _, slow_cold = playbook(inv)
        rows.append({"step": "provision (cold)", "seconds": round(cold, 1), "target": TARGETS["cold"], "changed": "-"})
        rerun, changed, slow_rerun = playbook(inv)
        rows.append({"step": "provision (re-run)", "seconds": round(rerun, 1), "target": TARGETS["rerun"],
                     "changed": sum(changed.values())})
        checks = prerun_checks(inv)
        rows.append({"step": f"pre-run checks, {args.workers + 1} nodes (median of {len(checks)})",
                     "seconds": round(statistics.median(checks), 2), "target": TARGETS["checks"], "changed": "-"})
    except BaseException:
        if rows:
            console.print(table(rows, title="measured before the failure"))
        raise
    finally:
        if args.keep:
            console.print(f"lab kept: fab lab-down --inventory {inv}")
        else:
            lab.down(spec, say=console.print)
    console.print(table(rows, title=f"site.yml on {args.workers + 1} fresh lab hosts as {spec.login_user} "
                                     f"(load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"))
    for name, slow in (("cold", slow_cold), ("re-run", slow_rerun)):
        if slow:
            console.print(table(slow[:10], title=f"slowest tasks of the {name} provision"))
    out = REPO / "results" / "bench" / "provision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hosts": args.workers + 1, "user": spec.login_user, "rows": rows,
                               "slowest": {"cold": slow_cold, "rerun": slow_rerun},
                               "cpus": os.cpu_count(), "load": os.getloadavg()[0], "at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
