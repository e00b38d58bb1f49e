"""Plain single-process pipelines that `make bench` sets beside the workloads (same work, same iterations).

    python -m bench.baselines pagerank --input G.csv --iters 20 --output OUT.json
    python -m bench.baselines kmeans --input G.csv --k 16 --iters 20 --seed 42 --output OUT.json

* ``pagerank``: what a user writes with scipy: read the whole file (pyarrow's CSV reader), ids by
  ``np.unique``, the transition matrix by ``coo -> csr``, then ``--iters`` power-iteration steps.
* ``kmeans``: scikit-learn's ``KMeans`` (Lloyd, ``n_init=1``, ``tol=0``, at most ``--iters``
  iterations) from the same k-means++ start as ``workloads.kmeans`` (computed here, timed apart as
  ``init``), on the same points.

The output holds wall times per step and a result to compare with the workload's record.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_edges(path: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path)
    return table.column(0).to_numpy(), table.column(1).to_numpy()


def pagerank(args: argparse.Namespace) -> dict:
    import scipy.sparse as sp

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    src, dst = read_edges(args.input)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n, m = len(ids), len(src)
    s, d = inv[:m], inv[m:]
    loop = s == d
    rows, cols = np.concatenate([d, s[~loop]]), np.concatenate([s, d[~loop]])
    outdeg = np.bincount(cols, minlength=n).astype(np.float64)
    mat = sp.coo_array((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    dangling = outdeg == 0
    inv_out = np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, outdeg))
    t["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = np.full(n, 1.0 / n)
    for _ in range(args.iters):
        x = args.damping * (mat @ (x * inv_out)) + (args.damping * x[dangling].sum() + 1 - args.damping) / n
    t["compute"] = time.perf_counter() - t0
    top = np.argsort(-x, kind="stable")[:10]
    return {"timings_s": t, "top": [[int(ids[i]), float(x[i])] for i in top]}


def kmeans(args: argparse.Namespace) -> dict:
    from sklearn.cluster import KMeans

    from workloads.kmeans import local_init

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    src, dst = read_edges(args.input)
    pts = np.column_stack([src, dst]).astype(np.float64)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    init = local_init(pts[:, 0].copy(), pts[:, 1].copy(), args.k, args.seed)[1]
    t["init"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    km = KMeans(n_clusters=args.k, init=init, n_init=1, max_iter=args.iters, tol=0.0, algorithm="lloyd").fit(pts)
    t["compute"] = time.perf_counter() - t0
    return {"timings_s": t, "iterations": int(km.n_iter_), "inertia": float(km.inertia_),
            "centroids": km.cluster_centers_.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n")[0])
    p.add_argument("workload", choices=("pagerank", "kmeans"))
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--damping", type=float, default=0.85)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    out = pagerank(args) if args.workload == "pagerank" else kmeans(args)
    Path(args.output).write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
