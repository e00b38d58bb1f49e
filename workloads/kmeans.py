"""k-means over the edge list's (node1, node2) pairs as 2-D points: one kernel run by every rank, and its verifier.

Two definitions:

* ``--method blockwise`` is the seed's (:mod:`workloads.kmeans_seed`): scikit-learn's ``KMeans`` on
  each fixed ``--block-mb`` byte block of the file on its own, the mean Calinski-Harabasz score over
  the blocks; the same score for every runtime and worker count.
* ``--method global`` is distributed Lloyd over all points with a seeded k-means++ start.  Cluster
  sums are exact (integer coordinates, summed in int64 over chunks where float64 is exact) and every
  label is the exact nearest centre (ties -> lowest index), a pure function of the point and the
  centres, so the centroids are the same for every runtime and worker count.

Assignment is grid-filtered (:class:`workloads.pointgrid.PointGrid`): each worker sorts its points
once into cells with exact counts and sums, and a Lloyd step reads only the points of the cells that
straddle a Voronoi boundary.

global's Calinski-Harabasz score is computed exactly over all points from cluster counts, integer sums and
per-cluster squared distances (sklearn's ``calinski_harabasz_score`` loops over the clusters in
Python, a pass over all points for each).
:func:`reference_kmeans` (single process, plain Lloyd without the grid) verifies a run.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

from workloads import kmeans_seed
from workloads.comm import Comm
from workloads.graphio import InputInfo, read_range, split_ranges
from workloads.harness import cli, runs, track
from workloads.pointgrid import CHUNK, PointGrid, as_points, assign, cluster_stats, id_extent, within_sse
from workloads.record import UserError, run_main, timer


# ------------------------------------------------------------------------------ pure functions
def means(stats: np.ndarray, old: np.ndarray) -> np.ndarray:
    """New centres from reduced stats; an empty cluster keeps its old centre."""
    counts = stats[0]
    safe = np.maximum(counts, 1)
    new = np.stack([stats[1] / safe, stats[2] / safe], axis=1)
    return np.where((counts > 0)[:, None], new, old)


def calinski_harabasz(stats: np.ndarray, sse: np.ndarray) -> float:
    """CH from reduced (counts, sums) and per-cluster SSE to the cluster means (sklearn's definition)."""
    counts = stats[0]
    n, nonempty = int(counts.sum()), counts > 0
    k = int(nonempty.sum())
    if k < 2:  # k-means++ seeds a second cluster wherever a second distinct point exists
        raise UserError(f"Calinski-Harabasz needs 2 <= clusters < points, but all {n} points are the same "
                        "point (one cluster); use an input with distinct points")
    if k >= n:
        raise UserError(f"Calinski-Harabasz needs 2 <= clusters < points (got {k} clusters, {n} points); "
                        "use a --k below the number of distinct points, or more of them")
    mean = stats[1:].sum(axis=1) / n
    cm = (stats[1:, nonempty] / counts[nonempty]).T
    between = float((counts[nonempty] * ((cm - mean) ** 2).sum(axis=1)).sum())
    within = float(sse.sum())
    return 1.0 if within == 0.0 else between * (n - k) / (within * (k - 1))


def pick_index(weights_cum: np.ndarray, u: float) -> int:
    """Index i with cum[i-1] <= u < cum[i] (clipped), for D^2 sampling."""
    return int(min(np.searchsorted(weights_cum, u, side="right"), len(weights_cum) - 1))


def owner_of(totals: list[float], u: float) -> tuple[int, float]:
    """Worker whose share of the D^2 mass holds ``u`` (totals in worker order) and u within it."""
    acc = 0.0
    for w, s in enumerate(totals):
        if u < acc + s or w == len(totals) - 1:
            return w, u - acc
        acc += s
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------- worker state
class KMeansPart:
    """One worker's points (the global method).

    The points stay as parsed (integer ids) for the k-means++ start, then move into the
    :class:`PointGrid` (in cell order) for Lloyd's steps."""

    def __init__(self, rank: int, world: int, info: InputInfo) -> None:
        self.rank, self.world, self.info = rank, world, info
        self.x = self.y = self.d2 = self.chunk_mass = self.grid = None

    def load(self) -> tuple[int, int]:
        """Parse this rank's byte range: (points, the largest |coordinate|)."""
        lo, hi = split_ranges(self.info, self.world)[self.rank]
        self.x, self.y = read_range(self.info, lo, hi)
        return len(self.x), id_extent(self.x, self.y)

    def point(self, i: int) -> np.ndarray:
        return np.array([self.x[i], self.y[i]], dtype=np.float64)

    def add_center(self, c: np.ndarray) -> float:
        """Update D^2 with a new centre (chunked, in place); return this worker's D^2 mass."""
        if self.d2 is None:
            self.d2 = np.full(len(self.x), np.inf)
            self.chunk_mass = np.zeros(-(-len(self.x) // CHUNK))
        bx, by = np.empty(CHUNK), np.empty(CHUNK)  # reused: a fresh 512 KB temporary is a fresh mmap,
        for i, a in enumerate(range(0, len(self.x), CHUNK)):  # page faults every chunk (6x slower)
            d2 = self.d2[a:a + CHUNK]
            dx, dy = bx[:len(d2)], by[:len(d2)]
            np.subtract(self.x[a:a + CHUNK], c[0], out=dx)  # sq_dist's operations in its order
            np.subtract(self.y[a:a + CHUNK], c[1], out=dy)
            np.multiply(dx, dx, out=dx)
            np.multiply(dy, dy, out=dy)
            np.minimum(d2, np.add(dx, dy, out=dx), out=d2)
            self.chunk_mass[i] = d2.sum()
        return float(self.chunk_mass.sum())

    def pick(self, u: float) -> np.ndarray:
        """The point where the running D^2 mass passes ``u``: find the chunk, then the point in it."""
        b = pick_index(np.cumsum(self.chunk_mass), u)
        u -= float(self.chunk_mass[:b].sum())
        return self.point(b * CHUNK + pick_index(np.cumsum(self.d2[b * CHUNK:(b + 1) * CHUNK]), u))

    def index(self) -> None:
        """Move the points into the assignment grid (once, after the k-means++ start; the drivers time
        it as build).  The k-means++ state goes with them."""
        if self.grid is None:
            points = [self.x, self.y]
            self.x = self.y = self.d2 = self.chunk_mass = None  # D^2 (8 B a point) goes before the sort
            self.grid = PointGrid.taking(points)

    def lloyd(self, centers: np.ndarray) -> tuple[np.ndarray, int]:
        """Assign, return exact (3, k) stats and how many labels changed."""
        self.index()
        return self.grid.lloyd(centers)

    def sse(self, centers: np.ndarray) -> np.ndarray:
        return self.grid.sse(centers)


def kmeans_pp(k: int, seed: int, counts: list[int], point_at: Any, add_center: Any, pick: Any) -> np.ndarray:
    """Seeded k-means++ over points spread across workers (the same draws for any split).

    ``point_at(worker, i)``, ``add_center(c) -> [D^2 mass per worker]``, ``pick(worker, u)`` move data.
    """
    rng = np.random.default_rng(seed)
    total = sum(counts)
    offsets = np.cumsum([0, *counts])

    def uniform_point() -> np.ndarray:
        g = int(rng.integers(total))
        w = int(np.searchsorted(offsets, g, side="right") - 1)
        return point_at(w, g - int(offsets[w]))

    centers = [uniform_point()]
    for _ in range(1, k):
        masses = add_center(centers[-1])
        mass = math.fsum(masses)
        if mass <= 0.0:
            centers.append(uniform_point())
            continue
        w, u = owner_of(masses, float(rng.random()) * mass)
        centers.append(pick(w, u))
    return np.array(centers, dtype=np.float64)


def lloyd_loop(centers: np.ndarray, max_iter: int, step: Any, advance: Any = None
               ) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """``step(centers) -> (reduced stats, changed)``; (stats, centres, iterations, converged).

    Stopping rule: an iteration in which no label changes.  The labels are exact and the sums are
    integers, so the centres are then exactly a fixed point of Lloyd's step, at any size and split;
    ``max_iter`` reached first means not converged."""
    stats, iters = None, 0
    while iters < max_iter:
        iters += 1
        stats, changed = step(centers)
        centers = means(stats, centers)
        if advance:
            advance(1)
        if changed == 0:
            return stats, centers, iters, True
    return stats, centers, iters, False


def local_init(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[KMeansPart, np.ndarray]:
    """The seeded k-means++ start over points held by one process: (the points' part, the centres)."""
    part = KMeansPart(0, 1, None)  # type: ignore[arg-type]
    part.x, part.y = x, y
    init = kmeans_pp(k, seed, [len(x)], lambda w, i: part.point(i), lambda c: [part.add_center(c)],
                     lambda w, u: part.pick(u))
    return part, init


def reference_kmeans(x: np.ndarray, y: np.ndarray, k: int, seed: int, max_iter: int) -> dict[str, Any]:
    """The single-process run of the global method (the verifier): the same k-means++ start, then plain
    Lloyd, every point against every centre (:func:`assign`), no grid."""
    init = local_init(x, y, k, seed)[1]
    labels = None

    def step(c: np.ndarray) -> tuple[np.ndarray, int]:
        nonlocal labels
        new = assign(x, y, c)
        changed = len(new) if labels is None else int(np.count_nonzero(new != labels))
        labels = new
        return cluster_stats(new, x, y, k), changed

    stats, centers, iters, done = lloyd_loop(init, max_iter, step)
    sse = within_sse(labels, x, y, centers)
    return {"centroids": centers, "ch_score": calinski_harabasz(stats, sse), "inertia": float(sse.sum()),
            "iterations": iters, "converged": done}


# ------------------------------------------------------------------------------------ drivers
def _global_metrics(args: argparse.Namespace, stats: np.ndarray, centers: np.ndarray, sse: np.ndarray,
                    iters: int, done: bool) -> dict[str, Any]:
    return {"method": "global", "k": args.k, "ch_score": calinski_harabasz(stats, sse),
            "inertia": float(sse.sum()), "centroids": centers.tolist(), "iterations": iters,
            "converged": done, "stopped_by": "no label changed" if done else "max_iter",
            "points": int(stats[0].sum()), "cluster_sizes": stats[0].tolist()}


VERIFY_TOL = 1e-9  # relative: what may separate a run's centroids and CH from the reference's


def relative_error(got: Any, want: Any) -> float:
    """Largest |got - want| over the largest |want| (scalars or arrays)."""
    return float(np.abs(np.asarray(got) - want).max() / max(np.abs(want).max(), 1e-300))


def verify(args: argparse.Namespace, info: InputInfo, metrics: dict[str, Any]) -> dict[str, Any]:
    """Re-run single-process and compare (global: centroids and CH; blockwise: the mean CH)."""
    if args.method == "blockwise":
        block_bytes = args.block_mb << 20
        scores = kmeans_seed.rank_scores(info, block_bytes, args.k, args.seed, 0, 1)
        ref = kmeans_seed.metrics(args.k, scores, info, block_bytes)
        err = relative_error(metrics["ch_score"], ref["ch_score"])
        return {"reference": "single-process blockwise", "error": err,
                **track.verdict(err <= VERIFY_TOL, f"mean CH relative error {err:.3g} > {VERIFY_TOL:g}")}
    x, y = as_points(*read_range(info, info.data_start, info.size))
    ref = reference_kmeans(x, y, args.k, args.seed, args.max_iter)
    err = max(relative_error(metrics["centroids"], ref["centroids"]), relative_error(metrics["ch_score"], ref["ch_score"]))
    same_stop = (ref["iterations"], ref["converged"]) == (metrics["iterations"], metrics["converged"])
    how = "converged" if ref["converged"] else "not converged"
    why = (f"centroids/CH relative error {err:.3g} > {VERIFY_TOL:g}" if same_stop else
           f"the reference stopped after {ref['iterations']} iterations ({how}), this run after {metrics['iterations']}")
    return {"reference": "single-process plain Lloyd (no grid)", "error": err, "reference_iterations": ref["iterations"],
            "reference_converged": ref["converged"], **track.verdict(err <= VERIFY_TOL and same_stop, why)}


def _check_points(total: int, extent: int, k: int, uri: str) -> None:
    """``extent``: the largest |coordinate| of any point (a cluster's exact int64 sums must fit)."""
    if total == 0:
        raise UserError(f"input file has no edges: {uri}")
    if total <= k:
        raise UserError(f"k-means with --k {k} needs more than {k} points; {uri} has {total}")
    if total * extent >= 2**63:
        raise UserError(f"k-means sums coordinates exactly in int64: {total} points with ids up to {extent} "
                        f"could overflow it; renumber the ids below {(2**63 - 1) // total}")


def _record(args: argparse.Namespace, info: InputInfo, rec: dict, metrics: dict[str, Any],
            peaks_gib: dict[str, list[float | None]]) -> None:
    """Rank 0's record: the metrics, the verification (``--verify``) and every rank's phase peaks, then
    its own while it made these (``results``)."""
    rec["metrics"] = metrics
    with track.results_phase(rec, peaks_gib):
        rec["dataset"]["records"] = metrics["points"]
        if args.verify:
            with timer(rec["timings_s"], "verify"):
                rec["verification"] = verify(args, info, metrics)


def run(args: argparse.Namespace, info: InputInfo, rec: dict, comm: Comm) -> None:
    """One rank of k-means (every runtime, and one process for ``--framework reference``)."""
    t = rec["timings_s"]
    track.mark_startup(args, rec)
    rec["nodes"] = len(comm.hosts())
    lead = comm.rank == 0
    peaks: dict[str, int] = {}
    if args.method == "blockwise":
        block_bytes = args.block_mb << 20
        with timer(t, "compute", peaks):
            scores = kmeans_seed.gather(comm, comm.guard(kmeans_seed.rank_scores, info, block_bytes, args.k,
                                                         args.seed, comm.rank, comm.world))
        metrics = comm.guard(kmeans_seed.metrics, args.k, scores, info, block_bytes)
        peaks_gib = track.rank_peaks(comm, peaks)
        if lead:
            _record(args, info, rec, metrics, peaks_gib)
        return
    part = KMeansPart(comm.rank, comm.world, info)
    with timer(t, "load", peaks):
        loaded = np.stack(comm.allgather(np.array(comm.guard(part.load), dtype=np.int64)))  # [rank, (points, extent)]
        counts = [int(c) for c in loaded[:, 0]]
    comm.guard(_check_points, sum(counts), int(loaded[:, 1].max()), args.k, info.uri)

    def point_at(w: int, i: int) -> np.ndarray:
        mine = part.point(i) if comm.rank == w else np.zeros(2)
        return comm.allreduce(mine)  # exact: one non-zero contribution

    def pick(w: int, u: float) -> np.ndarray:
        mine = part.pick(u) if comm.rank == w else np.zeros(2)
        return comm.allreduce(mine)

    def add_center(c: np.ndarray) -> list[float]:
        return [float(v) for v in np.concatenate(comm.allgather(np.array([part.add_center(c)])))]

    steps: dict[str, float] = {}
    with timer(t, "build"):
        with timer(steps, "init", peaks):
            init = kmeans_pp(args.k, args.seed, counts, point_at, add_center, pick)
        with timer(steps, "grid", peaks):
            comm.guard(part.index)

    def step(c: np.ndarray) -> tuple[np.ndarray, int]:
        stats, changed = part.lloyd(c)
        red = comm.allreduce(np.concatenate([stats.ravel(), [changed]]).astype(np.int64))
        return red[:-1].reshape(3, -1), int(red[-1])

    label = f"k-means ({args.framework})"
    with timer(t, "compute", peaks), track.maybe(lead, track.progress(label, args.max_iter)) as adv:
        stats, centers, iters, done = lloyd_loop(init, args.max_iter, step, adv)
        sse = comm.allreduce(part.sse(centers))
    peaks_gib = track.rank_peaks(comm, peaks)
    if lead:
        _record(args, info, rec, _global_metrics(args, stats, centers, sse, iters, done), peaks_gib)
        rec["metrics"]["build_steps_s"] = steps


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.kmeans", description=__doc__.split("\n")[0])
    cli.add_common_args(p)
    p.add_argument("--method", choices=("blockwise", "global"), default="global")
    p.add_argument("--k", type=int, default=16, help="clusters (the seed: 16)")
    p.add_argument("--seed", type=int, default=42, help="k-means++ / sklearn random_state (the seed: 42)")
    p.add_argument("--max-iter", type=int, default=1000,
                   help="global: Lloyd iterations at most (it stops when no label changes; data_1 needs 446)")
    p.add_argument("--block-mb", type=int, default=20, help="blockwise: block size in MiB (the seed: 20)")
    args = p.parse_args(argv)
    cli.check_run_options(p, args)
    cli.at_least(p, 2, k=args.k)
    if (wrong := cli.wrong_seed("seed", args.seed)) is not None:
        p.error(wrong)
    cli.at_least(p, 1, max_iter=args.max_iter, block_mb=args.block_mb)
    if args.method == "blockwise":  # (global's reference is plain Lloyd, not the grid run)
        cli.refuse_self_verify(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = {k: getattr(args, k) for k in ("method", "k", "seed", "max_iter", "block_mb")}
    return runs.execute("kmeans", args, params, run)


if __name__ == "__main__":
    sys.exit(run_main(main))
