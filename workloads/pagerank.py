"""PageRank over an edge list: one kernel (partitioned CSR SpMV) run by every rank, and its verifier.

Semantics (networkx's ``pagerank``): damping ``d`` (0.85), uniform teleport, the rank of
dangling nodes spread uniformly, start at 1/n.  Edges are undirected unless ``--directed``; repeated
lines count as parallel edges (networkx on a MultiGraph).  Nodes are the ids that occur in the file,
relabelled densely in id order; reported ids are the file's int64 ids.

Stopping: when the L1 change ``sum|x' - x|`` is below ``--tol`` (absolute, 1e-15 by default), the same
test at every size.  networkx's ``< n * tol`` cannot fail once n > 2/tol (an L1 change of two
probability vectors is at most 2), so a large graph would stop after one step.  The iteration is a
d-contraction in L1, so after a step with change ``c`` the distance to the fixed point is at most
``d/(1-d) * c`` (the record's ``error_bound``), and the change after k steps is at most ``2 d^(k-1)``,
which gives the default ``--max-iter`` (:func:`iterations_for`).  With 1e-15 the bound is 5.7e-15 at
d = 0.85: top scores above ~6e-6 (the top 10 of graphs up to ~1e8 nodes) are within 1e-9 relative of
the converged vector.  float64's floor for the change is ~3e-17 on large graphs; where rounding keeps
it above tol (a hub on a small graph: up to ~1e-14), the run stops when it no longer falls
(:class:`StopRule`, ``stopped_by: floor``).  ``--tol 0`` runs exactly ``--max-iter`` iterations
(benchmarks, the seed comparison) and says "not converged".

How the work is split (:func:`run`, the same code in every runtime; only ``comm`` moves data): every
rank parses its byte range, the ranks renumber the nodes by degree, each rank gets the arcs of its rows
and builds them as CSR row blocks (:mod:`workloads.graphbuild`, the graph's builder); an iteration is
``x'[rows] = d * P[rows] @ (x / outdeg) + (d*dangling + 1-d)/n`` on each rank's rows -- the same
products as ``A @ x`` with ``A[v, u] = 1/outdeg(u)`` -- plus their L1 change, then an all-gather of
``x'`` (:func:`pagerank_step`).

:func:`reference_pagerank` is the single-process scipy version used to verify a run (gapbs style).

``--method seed`` also runs the seed paper's algorithm beside this one (:mod:`workloads.pagerank_seed`):
torch_ppr's PageRank on each fixed ``--block-mb`` batch of the file, scores summed per node; the record
holds its top-k, their overlap with ours and the L1 distance.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from workloads import graphbuild, pagerank_seed
from workloads.comm import Comm
from workloads.graphbuild import GraphPart, RowBlock, check_ids, node_ids, spmv_blocks
from workloads.graphio import InputInfo, read_range
from workloads.harness import cli, runs, track
from workloads.record import run_main, timer


# ------------------------------------------------------------------------------------ the kernel
def inverse_degree(outdeg: np.ndarray) -> np.ndarray:
    """1/outdeg, 0 for dangling nodes."""
    with np.errstate(divide="ignore"):
        return np.where(outdeg > 0, 1.0 / outdeg, 0.0)


def pagerank_step(blocks: list[tuple[int, RowBlock]], x: np.ndarray, inv_out: np.ndarray, dangling: np.ndarray,
                  damping: float, lo: int, out: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, float]:
    """One power-iteration step for the worker's rows [lo, lo+len(out)) given the full previous ``x``.

    ``blocks`` are the rows' pattern (:func:`spmv_blocks`); returns (the rows' new values, written into
    ``out``; their L1 change).  ``x`` is scaled by ``inv_out`` in place (the SpMV's input: an n-long
    vector less on every rank) and is scratch afterwards; ``prev`` (as long as ``out``) keeps the rows'
    previous values for the change.  No per-iteration allocation of vectors (here every large
    allocation is fresh pages to fault in).
    """
    n = len(x)
    base = (damping * x[dangling].sum() + (1.0 - damping)) / n
    np.copyto(prev, x[lo:lo + len(out)])
    spmv_blocks(blocks, np.multiply(x, inv_out, out=x), out)
    out *= damping
    out += base
    diff = np.subtract(out, prev, out=prev)
    return out, float(np.abs(diff, out=diff).sum())


def top_k(ids: np.ndarray, x: np.ndarray, k: int) -> list[list[Any]]:
    """[[node_id, score], ...] by score descending, ties by id ascending."""
    k = min(k, len(x))
    if k <= 0:
        return []
    cand = np.argpartition(-x, k - 1)[:k] if k < len(x) else np.arange(len(x))
    thr = x[cand].min()
    cand = np.flatnonzero(x >= thr)  # include every tie at the threshold, then order
    order = np.lexsort((ids[cand], -x[cand]))[:k]
    return [[int(ids[cand[i]]), float(x[cand[i]])] for i in order]


DEFAULT_TOL = 1e-15  # absolute L1 change; see the module docstring for why this value
MAX_ITER_MARGIN = 1.1  # the default --max-iter: the exact-arithmetic count plus 10% for rounding
FLOOR_TOL = 1e-17  # below float64's floor for an L1 change: a run to it stops at the floor (StopRule)
MAX_TOL = 2.0  # the L1 change of two probability vectors is at most 2: a --tol above stops no earlier
TOP_REL_TARGET = 1e-9  # what the default tolerance is for: top-k scores this close (relative) to the truth
SAME_ITER_TOL = 1e-12  # a fixed-iteration run against the reference at the same count (L1, top-k relative)
FLOOR_STEPS = 5  # the change did not reach a new minimum for this many steps: rounding, not convergence ...
FLOOR_CEILING = 1e-13  # ... below this (a hub's sum of many terms keeps the change at up to ~1e-14)


def converged(change: float, tol: float) -> bool:
    """The stopping rule: an absolute L1 change, the same test for 1 k and 100 M nodes."""
    return change < tol


class StopRule:
    """Called with each step's L1 change: "tol" (below ``tol``), "floor" (float64's floor reached above
    ``tol``) or None (go on).  ``tol`` 0: never (a fixed number of steps).

    In exact arithmetic the change falls by at least a factor d every step, so a change that stops
    falling is rounding: on small graphs with a hub the floor can be ~1e-14, above the default tol."""

    def __init__(self, tol: float) -> None:
        self.tol, self.best, self.stale = tol, math.inf, 0

    def __call__(self, change: float) -> str | None:
        if self.tol <= 0:
            return None
        if converged(change, self.tol):
            return "tol"
        self.stale = self.stale + 1 if change >= self.best else 0
        self.best = min(self.best, change)
        return "floor" if self.stale >= FLOOR_STEPS and self.best < FLOOR_CEILING else None


def error_bound(change: float, damping: float) -> float:
    """L1 distance to the fixed point after a step whose L1 change was ``change`` (d-contraction)."""
    return damping / (1.0 - damping) * change


def rounding_bound(row_weight: float, n: int, damping: float) -> float:
    """L1 distance that float64's rounding can add to :func:`error_bound` (which holds in exact
    arithmetic), to first order.  A step is off from the exact map by at most u = 2^-53 times:
    each row's sum of its m_v terms, (m_v - 1) of the row's value whatever the order; the scaling,
    the damping and the teleport shift, 3 more; the dangling nodes' sum, numpy's pairwise summation,
    (log2 n + 16) of it, added to every row.  Over the rows that is u (W + log2 n + 19) with
    ``row_weight`` W = sum of m_v x_v (x sums to 1), and a d-contraction keeps the distance of the
    computed fixed point within 1/(1-d) of one step's error.  W is the mean row length weighted by
    rank: ~20 on the Friendster-like graphs, thousands where a hub holds much of the rank."""
    return 2.0**-53 * (row_weight + math.log2(max(n, 2)) + 19.0) / (1.0 - damping)


def reference_rounding(m: sp.csr_array, x: np.ndarray, damping: float) -> float:
    """:func:`rounding_bound` of the reference's iteration (its rows' stored entries, parallel arcs summed)."""
    return rounding_bound(float(np.diff(m.indptr) @ x), len(x), damping)


def iterations_for(tol: float, damping: float) -> int:
    """Steps that bring the L1 change below ``tol`` (0 < tol < :data:`MAX_TOL`) in exact arithmetic
    (change_k <= 2 d^(k-1)), plus a margin for rounding: the default ``--max-iter``.  A ``tol`` below
    :data:`FLOOR_TOL` gets the steps to the floor, where the run stops anyway."""
    tol = max(tol, FLOOR_TOL)
    return int(math.ceil(MAX_ITER_MARGIN * (math.log(tol / MAX_TOL) / math.log(damping) + 1.0)))


def power_iterate(step_all: Callable[[np.ndarray], tuple[np.ndarray, float]], n: int, tol: float, max_iter: int,
                  advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, int, str, float]:
    """The driver loop of both runtimes: ``step_all(x)`` returns the next full vector and its L1 change.

    Returns (x, iterations, what stopped it: "tol", "floor" or "max_iter", last L1 change)."""
    x = np.full(n, 1.0 / n)
    change, stop = math.inf, StopRule(tol)
    for it in range(1, max_iter + 1):
        x, change = step_all(x)
        if advance:
            advance(1)
        if why := stop(change):
            return x, it, why, change
    return x, max_iter, "max_iter", change


# ---------------------------------------------------------------------------- the verifier
# A code path of its own: ids by np.unique, the matrix by scipy from the edge list (none of the
# relabelling, degree order, row split or CSR code of :mod:`workloads.graphbuild`), one process.
def reference_matrix(src: np.ndarray, dst: np.ndarray, directed: bool
                     ) -> tuple[np.ndarray, sp.csr_array, np.ndarray]:
    """Single-process transition matrix: (ids, M with M[v, u] = 1/outdeg(u), dangling mask)."""
    ids, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    s, d = inverse[:len(src)], inverse[len(src):]
    n = len(ids)
    if directed:
        to, frm = d, s
    else:  # both directions, a self-loop once (as networkx counts it)
        loop = s == d
        to, frm = np.concatenate([d, s[~loop]]), np.concatenate([s, d[~loop]])
    adj = sp.coo_array((np.ones(len(frm)), (to, frm)), shape=(n, n)).tocsr()  # summed duplicates: multigraph
    outdeg = np.bincount(frm, minlength=n).astype(np.float64)
    dangling = outdeg == 0
    scale = np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, outdeg))
    return ids, sp.csr_array(adj @ sp.diags_array(scale)), dangling


def reference_iterate(m: sp.csr_array, dangling: np.ndarray, *, damping: float, tol: float, max_iter: int
                      ) -> tuple[np.ndarray, int, str, float]:
    """The power iteration with scipy: (ranks, iterations, what stopped it (:class:`StopRule`), last
    L1 change).  A tiny ``tol`` (:data:`FLOOR_TOL`) runs it to float64's floor."""
    n = m.shape[0]
    x = np.full(n, 1.0 / n)
    change, stop = math.inf, StopRule(tol)
    for it in range(1, max_iter + 1):
        new = damping * (m @ x) + (damping * x[dangling].sum() + 1.0 - damping) / n
        change = float(np.abs(new - x).sum())
        x = new
        if why := stop(change):
            return x, it, why, change
    return x, max_iter, "max_iter", change


def reference_pagerank(src: np.ndarray, dst: np.ndarray, *, directed: bool = False, damping: float = 0.85,
                       tol: float = DEFAULT_TOL, max_iter: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, int, str, float]:
    """Single-process scipy PageRank (the verifier): (ids, ranks, iterations, what stopped it, last change)."""
    ids, m, dangling = reference_matrix(src, dst, directed)
    if max_iter is None:
        max_iter = iterations_for(tol, damping)
    x, it, why, change = reference_iterate(m, dangling, damping=damping, tol=tol, max_iter=max_iter)
    return ids, x, it, why, change


# ------------------------------------------------------------------------------- worker state
class PageRankPart(GraphPart):
    """One rank's share (:class:`GraphPart`) and the PageRank state of its rows."""

    def __init__(self, rank: int, world: int, info: InputInfo, directed: bool, damping: float,
                 fault: bool = False) -> None:
        super().__init__(rank, world, info, directed)
        self.damping, self.fault = damping, fault

    def build(self, outdeg: np.ndarray) -> int:
        """This rank's row blocks (:meth:`GraphPart.row_blocks`) and the iteration's vectors; ``outdeg``
        renumbered.  Returns the blocks' arcs."""
        self.blocks = self.row_blocks(outdeg)
        hit = next((blk for _, blk in self.blocks if blk.nnz), None)
        if self.fault and self.rank == 0 and hit is not None:  # --inject-fault: a wrong kernel to catch
            hit.perturb()
        self.inv_out = inverse_degree(outdeg)
        self.dangling = np.flatnonzero(outdeg == 0)
        self.out = np.empty(self.hi - self.lo)
        self.prev = np.empty(self.hi - self.lo)
        return sum(blk.nnz for _, blk in self.blocks)

    def step(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """:func:`pagerank_step` on this rank's rows: their new values and their L1 change."""
        return pagerank_step(self.blocks, x, self.inv_out, self.dangling, self.damping, self.lo, self.out,
                             self.prev)

    def row_weight(self, x: np.ndarray) -> float:
        """Sum over this rank's rows of (their arcs) * x[row], ``x`` the full vector in the rows'
        numbering: its share of :func:`rounding_bound`'s W (a hub row counted once per column segment
        it is split into, its arcs in each)."""
        total = 0.0
        for first, blk in self.blocks:
            for c in blk.chunks:
                at = self.lo + first + c.first
                total += float(np.diff(c.indptr) @ x[at:at + len(c.indptr) - 1])
        return total

    def release(self) -> None:
        """Drop the row blocks and the iteration's vectors (the largest arrays a rank holds) once done."""
        self.blocks = []
        self.inv_out = self.dangling = self.out = self.prev = None


# ------------------------------------------------------------------------------------ drivers
def convergence_metrics(top: list[list[Any]], iterations: int, stopped_by: str, change: float, damping: float
                        ) -> dict[str, Any]:
    """What stopped the run and how far it can be from the converged vector.

    ``error_bound``: L1 distance to the fixed point in exact arithmetic (:func:`rounding_bound` is
    float64's share, recorded beside it); ``top_error_bound``: relative error of the reported scores
    (an entry's error is at most the L1 distance)."""
    bound = error_bound(change, damping)
    low = min((s for _, s in top), default=None)
    return {"iterations": iterations, "converged": stopped_by != "max_iter", "stopped_by": stopped_by,
            "l1_change": change, "error_bound": bound,
            "top_error_bound": bound / max(low - bound, 1e-300) if low is not None and bound < low else None}


def _finish(args: argparse.Namespace, info: InputInfo, rec: dict, ids: np.ndarray, x: np.ndarray,
            iterations: int, stopped_by: str, change: float, rounding: float, n_edges: int, nnz: int,
            seed: list[pagerank_seed.Batch] | None = None) -> None:
    rec["dataset"]["records"] = n_edges
    top = top_k(ids, x, args.top)
    rec["metrics"] = {**convergence_metrics(top, iterations, stopped_by, change, args.damping),
                      "rounding_bound": rounding, "nodes": len(x), "edges": n_edges, "arcs": nnz, "top": top}
    if seed is not None:
        rec["metrics"]["seed"] = pagerank_seed.metrics(args, ids, x, top, seed)
    if args.verify:
        with timer(rec["timings_s"], "verify"):
            rec["verification"] = verify(args, info, ids, x, iterations, stopped_by, change, rounding)


def compare(ids: np.ndarray, x: np.ndarray, rx: np.ndarray, k: int) -> tuple[float, float, float]:
    """(L1 distance, largest relative error over both vectors' top-k nodes, the smallest reference
    score among them)."""
    k = max(k, 1)
    nodes = np.unique(np.concatenate([np.argsort(-x, kind="stable")[:k], np.argsort(-rx, kind="stable")[:k]]))
    rel = np.abs(x[nodes] - rx[nodes]) / rx[nodes]
    return float(np.abs(x - rx).sum()), float(rel.max()), float(rx[nodes].min())


def verify(args: argparse.Namespace, info: InputInfo, ids: np.ndarray, x: np.ndarray, iterations: int,
           stopped_by: str, change: float, rounding: float) -> dict[str, Any]:
    """Compare with the truth, the single-process scipy power iteration (:func:`reference_matrix`).

    * a run stopped by ``--max-iter`` (``--tol 0``, or a tolerance not reached): the reference runs
      as many steps; both the L1 distance and the top-k relative error must be within 1e-12.  (Its
      own error bound would let a wrong kernel pass: after one step it allows ~1 relative.)
    * otherwise the reference runs to float64's floor, and the run must be within what it states:
      L1 distance within its ``error_bound`` and ``rounding`` (:func:`rounding_bound`) plus the
      reference's two, top-k scores within the relative error that allows.  A reference that does
      not converge proves nothing: the check fails.

    ``error`` is the largest relative error of the top-k scores (``--top``, at least one node); null
    where there is no distance to give (the node sets differ)."""
    src, dst = read_range(info, info.data_start, info.size)
    same = stopped_by == "max_iter"
    rids, m, dangling = reference_matrix(src, dst, args.directed)
    del src, dst
    rx, r_iters, r_stop, r_change = reference_iterate(
        m, dangling, damping=args.damping, tol=0.0 if same else FLOOR_TOL,
        max_iter=iterations if same else iterations_for(FLOOR_TOL, args.damping))
    r_rounding = reference_rounding(m, rx, args.damping)
    del m, dangling
    out: dict[str, Any] = {"reference": "scipy power iteration, single process",
                           "mode": "same-iterations" if same else "converged", "reference_iterations": r_iters,
                           "error": None, "l1_error": None}
    if len(rids) != len(ids) or not np.array_equal(rids, ids):
        return {**out, **track.verdict(False, "the node sets differ")}
    l1, rel, low = compare(ids, x, rx, args.top)
    out.update(error=rel, l1_error=l1)
    off = f"L1 distance {l1:.3g}, top-{max(args.top, 1)} relative error {rel:.3g}"
    if same:
        return {**out, "accuracy": SAME_ITER_TOL,
                **track.verdict(l1 <= SAME_ITER_TOL and rel <= SAME_ITER_TOL,
                                f"after the same {iterations} iterations: {off}; both must be <= {SAME_ITER_TOL:g}")}
    if r_stop == "max_iter":
        return {**out, **track.verdict(
            False, f"the reference did not converge in {r_iters} iterations (L1 change {r_change:.3g})")}
    ref_bound = error_bound(r_change, args.damping)
    l1_allowed = error_bound(change, args.damping) + rounding + ref_bound + r_rounding
    rel_allowed = l1_allowed / low
    return {**out, "reference_error_bound": ref_bound, "reference_rounding_bound": r_rounding,
            "accuracy": rel_allowed,
            "l1_accuracy": l1_allowed, **track.verdict(
                l1 <= l1_allowed and rel <= rel_allowed,
                f"{off}; the run's error bound allows {l1_allowed:.3g} and {rel_allowed:.3g}")}


def run_reference(args: argparse.Namespace, info: InputInfo, rec: dict, comm: Any) -> None:
    t = rec["timings_s"]
    track.mark_startup(args, rec)
    peaks: dict[str, int] = {}
    with timer(t, "load", peaks):
        src, dst = read_range(info, info.data_start, info.size)
    check_ids(int(min(src.min(), dst.min())) if len(src) else 0, len(src), info.uri)
    with timer(t, "build", peaks):
        ids, m, dangling = reference_matrix(src, dst, args.directed)
    with timer(t, "compute", peaks):
        x, iters, stopped_by, change = reference_iterate(m, dangling, damping=args.damping, tol=args.tol,
                                                         max_iter=args.max_iter)
    rec["nodes"] = 1
    rounding = reference_rounding(m, x, args.damping)
    n_edges = len(src)
    nnz = n_edges if args.directed else 2 * n_edges - int(np.count_nonzero(src == dst))  # parallel arcs each
    del m, src, dst
    seed = None
    if args.method == "seed":
        with timer(t, "seed", peaks):
            seed = pagerank_seed.rank_batches(info, args.block_mb << 20, 0, 1)
    with track.results_phase(rec, track.rank_peaks(None, peaks)):
        _finish(args, info, rec, ids, x, iters, stopped_by, change, rounding, n_edges, nnz, seed)
    rec["metrics"]["spmv_s_per_iter"] = t["compute"] / max(iters, 1)


def run(args: argparse.Namespace, info: InputInfo, rec: dict, comm: Comm) -> None:
    """One rank of the distributed PageRank (every runtime): load, build, iterate; rank 0 records."""
    t = rec["timings_s"]
    track.mark_startup(args, rec)
    w = comm.world
    part = PageRankPart(comm.rank, w, info, args.directed, args.damping, args.inject_fault)
    rec["nodes"] = len(comm.hosts())
    peaks: dict[str, int] = {}
    with timer(t, "load", peaks):
        m, lo_id, hi_id = comm.guard(part.load)
        n_edges = int(comm.allreduce(np.array([m], dtype=np.int64))[0])
        # ~id (-id - 1, which cannot overflow where -id can): the largest ~lo is ~ the smallest id
        not_min, max_id = comm.allreduce(np.array([~lo_id if m else ~(2**62), hi_id], dtype=np.int64), "max")
    comm.guard(check_ids, ~int(not_min), n_edges, info.uri)
    max_id = int(max_id)
    steps: dict[str, float] = {}
    with timer(t, "build"):
        g = graphbuild.distribute(part, comm, n_edges, max_id, steps, peaks)
        with timer(steps, "csr", peaks):
            nnz = int(comm.allreduce(np.array([comm.guard(part.build, g.outdeg)]))[0])
    n, rank, bounds = len(g.outdeg), g.rank, g.bounds
    g.outdeg = None  # the part keeps what the iterations need; every n-long vector is memory on every rank
    label = f"pagerank ({args.framework})"
    spent: dict[str, float] = {}
    with timer(t, "compute", peaks), track.maybe(comm.rank == 0, track.progress(label, args.max_iter)) as adv:
        x, iters, stopped_by, change = iterate(part, comm, bounds, n, args, adv, spent)
    rounding = rounding_bound(float(comm.allreduce(np.array([part.row_weight(x)]))[0]), n, args.damping)
    part.release()  # the rank's rows and vectors go before rank 0 makes the results (n-long arrays of its own)
    x = x[rank]  # back to id order (x, the gather's vector, goes with this line)
    spmv = float(comm.allreduce(np.array([spent.get("spmv", 0.0)]), "max")[0])
    seed = None
    if args.method == "seed":
        with timer(t, "seed", peaks):
            seed = pagerank_seed.gather(comm, comm.guard(pagerank_seed.rank_batches, info, args.block_mb << 20,
                                                         comm.rank, comm.world))
    peaks_gib = track.rank_peaks(comm, peaks)
    if comm.rank == 0:
        with track.results_phase(rec, peaks_gib):
            _finish(args, info, rec, node_ids(g.node_set, g.dense), x, iters, stopped_by, change, rounding,
                    n_edges, nnz, seed)
        rec["metrics"]["spmv_s_per_iter"] = spmv / max(iters, 1)
        rec["metrics"]["build_steps_s"] = steps


def iterate(part: PageRankPart, comm: Comm, bounds: np.ndarray, n: int, args: argparse.Namespace,
            advance: Callable[[int], None] | None, spent: dict[str, float]
            ) -> tuple[np.ndarray, int, str, float]:
    """:func:`power_iterate` over every rank's row block; the gather's buffers live only here.
    ``spent["spmv"]``: this rank's seconds in its own rows' steps, the gather left out."""
    gather = comm.block_gatherer(np.diff(bounds), np.float64)

    def step_all(x: np.ndarray) -> tuple[np.ndarray, float]:
        with timer(spent, "spmv"):
            mine = part.step(x)
        return gather(*mine)  # the rows' new values and their L1 change, from every rank

    return power_iterate(step_all, n, args.tol, args.max_iter, advance)


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.pagerank", description=__doc__.split("\n")[0])
    cli.add_common_args(p)
    p.add_argument("--damping", type=float, default=0.85, help="0.95 = torch_ppr's alpha=0.05 (the seed)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help="stop when the L1 change sum|x'-x| < TOL (absolute, any graph size); "
                        "0 = run exactly --max-iter iterations (not converged)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="at most this many iterations (default: enough for --tol at --damping)")
    p.add_argument("--top", type=int, default=10, help="report the K best nodes")
    p.add_argument("--directed", action="store_true", help="treat node1 -> node2 as directed arcs")
    p.add_argument("--method", choices=("power", "seed"), default="power",
                   help="seed: also run the seed paper's per-batch torch_ppr PageRank and record it beside "
                        "this one (use --damping 0.95 to compare like with like)")
    p.add_argument("--block-mb", type=int, default=10, help="--method seed: batch size in MiB (the seed's Ray: 10)")
    p.add_argument("--inject-fault", action="store_true", help=argparse.SUPPRESS)  # tests: verification must fail
    args = p.parse_args(argv)
    if not 0.0 < args.damping < 1.0:
        p.error("--damping must be in (0, 1)")
    cli.check_run_options(p, args)
    cli.at_least(p, 0, tol=args.tol, top=args.top)
    if args.tol >= MAX_TOL:
        p.error(f"--tol must be below {MAX_TOL:g}, not {args.tol:g}: the L1 change between two probability "
                "vectors is at most 2, so every run would stop after one step (0: exactly --max-iter steps)")
    cli.at_least(p, 1, max_iter=args.max_iter, block_mb=args.block_mb)
    cli.refuse_self_verify(p, args)
    if args.max_iter is None:
        if args.tol == 0:
            p.error("--tol 0 runs exactly --max-iter iterations: give --max-iter")
        args.max_iter = iterations_for(args.tol, args.damping)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = {k: getattr(args, k) for k in ("damping", "tol", "max_iter", "top", "directed", "method")}
    if args.method == "seed":
        params["block_mb"] = args.block_mb
    return runs.execute("pagerank", args, params, run, reference=run_reference)


if __name__ == "__main__":
    sys.exit(run_main(main))
