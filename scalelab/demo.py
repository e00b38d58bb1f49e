"""`make demo`: from a fresh machine to a comparison table and a report, on the local lab.

lab up -> site.yml -> datasets (tiny and test_data) -> put-data -> PageRank and k-means with Ray and
torch on 2 nodes -> report.  Every step is the command a user would type; this only strings them.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from scalelab import cluster, inventory, lab, labspec, report, runner
from scalelab.cli import REPO_ROOT
from scalelab.errors import UserError

DEMO_DATASETS = ("tiny", "test_data")
DEMO_RUNS = (("pagerank", "test_data"), ("kmeans", "test_data"))


def run(inv: Path, say: Callable[[str], None], status: Callable[[str], None] | None = None,
        nodes: int = 2) -> tuple[Table, dict[str, Path], dict[str, float], list[str]]:
    from workloads import data

    steps: dict[str, float] = {}

    def step(name: str):
        say(f"[bold]== {name}[/]")
        return time.monotonic()

    t = step("lab up")
    lab.up(labspec.load_spec(inv), say=say)
    steps["lab up"] = time.monotonic() - t
    t = step("provision (ansible-playbook site.yml)")
    if cluster.provision(inv) != 0:
        raise UserError("site.yml failed: see the output above")
    steps["provision"] = time.monotonic() - t
    t = step("datasets")
    for name in DEMO_DATASETS:
        data.generate(name, REPO_ROOT / "data")
        cluster.put_data(inv, name, say=say)
    steps["datasets"] = time.monotonic() - t
    cl = inventory.load(inv)
    paths: list[Path] = []
    t = step(f"experiments on {nodes} nodes")
    for wl, ds in DEMO_RUNS:
        paths += runner.run_experiment(cl, wl, nodes, "both", ds, extra=["--verify"], say=say, status=status)
    steps["experiments"] = time.monotonic() - t
    t = step("report")
    out = report.build()
    steps["report"] = time.monotonic() - t
    return comparison(paths), out, steps, not_passed(paths)


def not_passed(paths: list[Path]) -> list[str]:
    """The runs of the demo that failed or whose result did not pass verification, as 'workload/framework'."""
    bad = []
    for p in paths:
        r = json.loads(p.read_text())
        if r["status"] != "ok" or not (r.get("verification") or {}).get("passed"):
            bad.append(f"{r['workload']}/{r['framework']} ({p})")
    return bad


def comparison(paths: list[Path]) -> Table:
    """Ray vs torch side by side per workload: total time, ratio, verification, quality."""
    recs = [json.loads(p.read_text()) for p in paths]
    t = Table(title="Ray vs torch.distributed (same kernel, same nodes)")
    for col in ("workload", "dataset", "nodes", "ray s", "torch s", "torch/ray", "verified", "agree"):
        t.add_column(col)
    by: dict[tuple, dict[str, dict]] = {}
    for r in recs:
        by.setdefault((r["workload"], (r.get("dataset") or {}).get("name"), r["nodes"]), {})[r["framework"]] = r
    for (wl, ds, n), fw in by.items():
        ray, torch = fw.get("ray"), fw.get("torch")

        def tot(r):
            return (r or {}).get("timings_s", {}).get("total") if r and r["status"] == "ok" else None
        tr, tt = tot(ray), tot(torch)
        ver = ["pass" if (r.get("verification") or {}).get("passed") else ("FAIL" if r.get("verification") else "-")
               if r["status"] == "ok" else "failed" for r in (ray, torch) if r]
        t.add_row(wl, str(ds), str(n), f"{tr:.2f}" if tr else "failed", f"{tt:.2f}" if tt else "failed",
                  f"{tt / tr:.2f}" if tr and tt else "-", "/".join(ver), _agree(wl, ray, torch))
    return t


def _agree(wl: str, a: dict | None, b: dict | None) -> str:
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return "-"
    ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
    if wl == "pagerank":
        ta, tb = [x[0] for x in ma.get("top", [])], [x[0] for x in mb.get("top", [])]
        return "same top" if ta and ta == tb else "top differs"
    if wl == "kmeans":
        ca, cb = ma.get("ch_score"), mb.get("ch_score")
        if ca and cb:
            return "same CH" if abs(ca - cb) <= 1e-9 * abs(ca) else f"CH {ca:.6g} vs {cb:.6g}"
    return "-"
