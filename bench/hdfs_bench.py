"""`make bench-hdfs`: a dataset read from HDFS over WebHDFS (workloads.graphio) beside the local copy, on a
worker of a running, provisioned cluster with HDFS (default: the lab).

    .venv/bin/python -m bench.hdfs_bench [--inventory inventory/lab] [--dataset data_1] [--node worker1]

`fab put-data DATASET` must have run (the dataset on every node and in HDFS /data).  Two measures per
source, each the best of --repeat: the raw bytes (64 MiB reads) and what a graph workload does with them
(`read_range` of the whole file: read + parse into two integer arrays).  The local copy sits in the page
cache after its first read (the lab's hosts share the machine's kernel, so it cannot be dropped): the
local numbers are the best case.  Prints a table and writes results/bench/hdfs.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

from scalelab import cluster as _cluster
from scalelab import inventory as _inventory
from scalelab.cli import console, table
from scalelab.inventory import node_var
from scalelab.provenance import remote
from scalelab.runner import dataset_path

REPO = Path(__file__).resolve().parent.parent

# Runs on the node in the venv, from the workloads' source directory: seconds per measure, best of N.
ON_NODE = """
import json, sys, time
from workloads import graphio
uris, repeat = sys.argv[1:3], int(sys.argv[3])
CHUNK = 64 << 20

def raw(uri):
    fs, path = graphio.open_fs(uri)
    with fs.open_input_file(path) as f:
        size, pos = f.size(), 0
        while pos < size:
            pos += len(f.read_at(min(CHUNK, size - pos), pos))
    return size

def parse(uri):
    info = graphio.inspect_input(uri)
    src, dst = graphio.read_range(info, info.data_start, info.size)
    return len(src)

out = {}
for uri in uris:
    for name, fn in (("raw", raw), ("parse", parse)):
        best, value = None, None
        for _ in range(repeat):
            t0 = time.monotonic()
            value = fn(uri)
            took = time.monotonic() - t0
            best = took if best is None else min(best, took)
        out[f"{uri} {name}"] = [best, value]
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inventory", type=Path, default=REPO / "inventory" / "lab")
    ap.add_argument("--dataset", default="data_1")
    ap.add_argument("--node", help="the node that reads (default: the first worker)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    cluster = _inventory.load(args.inventory)
    if not _cluster.hdfs_running(cluster):
        raise SystemExit(f"error: HDFS is not running on {cluster.master.name}: provision with Hadoop enabled")
    node = cluster.node(args.node) if args.node else cluster.nodes[min(1, len(cluster.nodes) - 1)]
    local = dataset_path(cluster, args.dataset)
    hdfs = (f"hdfs://{cluster.master.name}:{node_var(cluster, 'hadoop_namenode_rpc_port')}"
            f"{node_var(cluster, 'hadoop_data_path')}/{args.dataset}.csv")
    src, py = str(node_var(cluster, "scalelab_src")), f"{node_var(cluster, 'scalelab_venv')}/bin/python"
    cmd = (f"cd {shlex.quote(src)} && {shlex.quote(py)} -c {shlex.quote(ON_NODE)} "
           f"{shlex.quote(local)} {shlex.quote(hdfs)} {args.repeat}")
    console.print(f"reading {args.dataset} on {node.name}: local {local}, then {hdfs} (best of {args.repeat})")
    proc = remote(node, cmd, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"error: the read on {node.name} failed (did `fab put-data {args.dataset}` run?): "
                         + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    size = res[f"{local} raw"][1]
    rows = []
    for what in ("raw", "parse"):
        t_local, t_hdfs = res[f"{local} {what}"][0], res[f"{hdfs} {what}"][0]
        rows.append({"measure": "bytes read" if what == "raw" else "read + parse (read_range)",
                     "local s": f"{t_local:.2f}", "local MiB/s": f"{size / t_local / 2**20:.0f}",
                     "webhdfs s": f"{t_hdfs:.2f}", "webhdfs MiB/s": f"{size / t_hdfs / 2**20:.0f}",
                     "webhdfs / local": f"{t_hdfs / t_local:.2f}x"})
    load = os.getloadavg()[0]
    console.print(table(rows, title=f"{args.dataset} ({size / 2**20:.0f} MiB) on {node.name} "
                                    f"(load {load:.1f} on {os.cpu_count()} CPUs)"))
    out = REPO / "results" / "bench" / "hdfs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": args.dataset, "bytes": size, "node": node.name, "rows": rows,
                               "load": load, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
