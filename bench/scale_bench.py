"""`make bench-scale`: PageRank (20 iterations) and k-means (global, k=16, 20 iterations) on the seed's
largest cut (`data`: 620 M edges, 10 GB) across the nodes of a running, provisioned cluster, in both
runtimes, beside the targets: each within 5 minutes, peak memory per node <= 6 GiB (the sampler's).

    .venv/bin/python -m bench.scale_bench [--inventory inventory/lab] [--dataset data] [--nodes 3]

The seed's PageRank took 45 min to 5 h on `data` and could not hold `data_2` in 8 GB.  The dataset is
generated once on the controller (`fab gen-data`) and copied to every node (`fab put-data`): `data`
needs ~11 GB on the controller plus ~11 GB per node, and the nodes' memory; a smaller `--dataset`
(data_1, data_2) runs the same steps.  The runs go through `fab run-experiment`'s code (checks, records
under results/, the sampler), so each record also keeps its timings.  Prints a table and writes
results/bench/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from scalelab import runner
from scalelab.cli import console, table
from scalelab.errors import UserError
from workloads import data

REPO = Path(__file__).resolve().parent.parent
TARGET_S, TARGET_MEM_GIB = 300.0, 6.0
# What one rank holds at its peak (measured 2026-12-05, docs/graph-performance.md): its parse, 8 B per edge
# (two int32 ids; parsed a block at a time); PageRank's exchange and build, ~6.9 B per arc in a unit test
# (two arcs per undirected edge) beside the degree order, the out-degrees and the degree counts (int32
# each); its iterations, the blocks' ~4.5 B per arc beside x, 1/outdeg, the degree order and torch's
# send buffer (n long each) and the rank's rows twice; k-means' grid sort, ~17 B per point (an edge is a
# point); and 1.2 GiB for the interpreter with numpy and torch or Ray, the runtime's buffers and the
# pages its object store keeps.  On the lab, `data` (3 ranks, 620 M edges, 41.5 M nodes) peaked
# 3.0-4.4 GiB above what the hosts hold idle (0.6 GiB a worker, 2.0 GiB the master: Hadoop, Ray's head).
PAGERANK_BUILD_B_PER_EDGE, PAGERANK_BUILD_B_PER_NODE = 14, 12
PAGERANK_ITER_B_PER_EDGE, PAGERANK_ITER_B_PER_NODE = 10, 32
KMEANS_B_PER_EDGE = 17
RANK_BASE_BYTES = int(1.2 * 2**30)
LAB_HOST_SERVICES_BYTES = 2 * 2**30
JOBS = {"pagerank": ["--tol", "0", "--max-iter", "20"],
        "kmeans": ["--method", "global", "--k", "16", "--max-iter", "20"]}


def rank_bytes(edges: int, nodes: int, ranks: int) -> float:
    """Peak bytes of one rank of PageRank or k-means (the larger) with ``edges / ranks`` edges."""
    share = edges / ranks
    return RANK_BASE_BYTES + max(PAGERANK_BUILD_B_PER_EDGE * share + PAGERANK_BUILD_B_PER_NODE * nodes,
                                 PAGERANK_ITER_B_PER_EDGE * share + PAGERANK_ITER_B_PER_NODE * nodes,
                                 KMEANS_B_PER_EDGE * share)


def check_lab_memory(dataset: str, edges: int, nodes: int, hosts: int) -> None:
    """The lab's hosts share this machine's memory: stop before generating and copying a dataset whose
    ranks (one per host) cannot fit in it together (the kernel's OOM killer would pick among all of
    this machine's processes, and every run would fail after minutes)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rank = rank_bytes(edges, nodes, hosts)
    need = hosts * (rank + LAB_HOST_SERVICES_BYTES)
    if need > 0.9 * mem:
        raise UserError(f"{dataset} on the lab needs ~{need / 2**30:.0f} GiB of this machine's memory (its "
                        f"{hosts} hosts share its {mem / 2**30:.0f} GiB; a rank peaks at ~{rank / 2**30:.1f} GiB): "
                        "pick a smaller --dataset, or run on a real cluster")


def main(argv: list[str] | None = None) -> int:
    try:
        return bench(argv)
    except UserError as exc:  # a check that failed: one line, as fab prints it
        raise SystemExit(f"error: {exc}") from None


def bench(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", type=Path, default=REPO / "inventory" / "lab")
    ap.add_argument("--dataset", default="data")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    args = ap.parse_args(argv)
    spec = data.spec_for(args.dataset)
    path = args.data_dir / f"{args.dataset}.csv"
    cluster = _inventory.load(args.inventory)
    on_lab = (args.inventory / "group_vars" / "all" / "lab.yml").exists()  # its hosts are this machine
    if on_lab:
        check_lab_memory(args.dataset, spec.edges, spec.nodes, len(cluster.nodes))
    if not path.exists():
        need = 16.5 * spec.edges  # bytes: ~16.1 per edge line in the seed's cuts
        args.data_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.data_dir).free
        if free < 1.1 * need:
            raise SystemExit(f"error: {args.dataset} needs ~{need / 2**30:.0f} GiB in {args.data_dir}, "
                             f"{free / 2**30:.0f} GiB free: free space or pick a smaller --dataset")
        console.print(f"generating {args.dataset} ({spec.edges:,} edges) into {args.data_dir} (once)")
        data.generate(args.dataset, args.data_dir)
    digest = _cluster.sha256_file(path)
    if on_lab:  # the lab's disks are this machine's too
        lacking = [n for n in cluster.nodes if not _cluster.has_copy(cluster, n, path, digest)]
        free, need = shutil.disk_usage(args.data_dir).free, path.stat().st_size * len(lacking)
        if free < 1.1 * need:
            raise SystemExit(f"error: a copy of {args.dataset} on each of the {len(lacking)} lab hosts without "
                             f"one needs ~{need / 2**30:.0f} GiB on this machine, {free / 2**30:.0f} GiB free: "
                             "pick a smaller --dataset")
    console.print(f"copying {args.dataset} to every node (skipped where it is already there)")
    _cluster.put_local(cluster, path, console.print, digest)
    rows, results = [], REPO / "results"
    for workload, extra in JOBS.items():
        paths = runner.run_experiment(cluster, workload, args.nodes, "both", args.dataset, 1, extra,
                                      results_dir=results, say=console.print)
        for p in paths:
            rec = json.loads(p.read_text())
            total = (rec.get("timings_s") or {}).get("total")
            hosts = ((rec.get("resources") or {}).get("hosts")) or {}
            peaks = [h["mem_peak"] / 1024 for h in hosts.values() if h.get("mem_peak") is not None]
            peak = max(peaks) if peaks else None
            rows.append({"workload": workload, "framework": rec["framework"], "status": rec["status"],
                         "total s": None if total is None else f"{total:.0f}",
                         "time target": "met" if total is not None and total <= TARGET_S else "NOT met",
                         "peak GiB/node": None if peak is None else f"{peak:.1f}",
                         "memory target": "met" if peak is not None and peak <= TARGET_MEM_GIB else "NOT met",
                         "record": str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)})
    load = os.getloadavg()[0]
    console.print(table(rows, title=f"{args.dataset} on {args.nodes} nodes of {cluster.inventory} "
                                    f"(targets {TARGET_S:.0f} s, {TARGET_MEM_GIB:.0f} GiB/node; load {load:.1f})"))
    out = REPO / "results" / "bench" / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": args.dataset, "nodes": args.nodes, "rows": rows, "load": load,
                               "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    failed = [f"{r['workload']} {r['framework']}" for r in rows if r["status"] != "ok"]
    if failed:  # a run that failed measured nothing: the table says what it could, the exit status says so
        console.print(f"error: {len(failed)} of {len(rows)} runs failed ({', '.join(failed)}): see their records")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
