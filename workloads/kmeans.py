"""k-means over the edge list's (node1, node2) pairs as 2-D points: one kernel run by every rank, and its verifier.

Two definitions (DESIGN.md):

* ``--method blockwise`` is the seed's: cut the file into fixed ``--block-mb`` (20 MiB) byte blocks,
  run ``KMeans(n_clusters=16, random_state=42)`` on each block independently, report the unweighted
  mean Calinski-Harabasz score.  Blocks do not depend on the worker count, and sklearn runs with one
  thread, so every runtime and worker count gives the same score.
* ``--method global`` is distributed Lloyd over all points with a seeded k-means++ start.  Cluster
  sums are exact (integer coordinates, summed in int64 over chunks where float64 is exact) and every
  label is the exact nearest centre (ties -> lowest index), a pure function of the point and the
  centres, so the centroids are the same for every runtime and worker count.

Assignment is grid-filtered (:class:`PointGrid`): each worker sorts its points once into a g x g grid
of power-of-two cells with exact per-cell counts and sums.  Per iteration, a cell whose every point is
provably nearest to one centre (bounding-box distances, with a relative margin far above rounding)
takes that centre wholesale, its points counted through the cell's sums and never read; only points in
the few cells that straddle a Voronoi boundary are compared with every centre, by direct differences.

The Calinski-Harabasz score is computed exactly over all points from cluster counts, integer sums and
per-cluster squared distances (sklearn's loops over clusters in Python: perf-notes §4d).
:func:`reference_kmeans` (single process, plain Lloyd without the grid) verifies a run.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Any

import numpy as np

from workloads import _dist
from workloads.graphio import InputInfo, block_ranges, read_range, split_ranges
from workloads.record import UserError, run_main, timer

CHUNK = 1 << 16  # points per chunk of elementwise work (temporaries stay in cache)
GRID_MAX = 512  # at most GRID_MAX x GRID_MAX cells per worker
_EXACT = float(2**53)
_MARGIN = 1e-9  # relative: a cell is "sure" only if its nearest centre wins by this much everywhere in it


# ------------------------------------------------------------------------------ pure functions
def exact_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parsed integer ids, checked to be exact as float64 coordinates (within +-2**53)."""
    # min/max, not np.abs: abs(INT64_MIN) overflows to INT64_MIN and would pass
    if len(a) and (min(a.min(), b.min()) <= -2**53 or max(a.max(), b.max()) >= 2**53):
        raise UserError("k-means needs every node id within +-2**53 to keep coordinates exact; renumber the ids")
    return a, b


def as_points(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids -> float64 coordinates (exact below 2**53)."""
    a, b = exact_ids(a, b)
    return a.astype(np.float64), b.astype(np.float64)


def assign(x: np.ndarray, y: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each point (ties -> lowest index), int32.

    Direct differences ``(x-cx)^2 + (y-cy)^2``, elementwise: a point's label never depends on which
    other points share its chunk or its worker.
    """
    labels = np.empty(len(x), dtype=np.int32)
    for a in range(0, len(x), CHUNK):
        xs, ys = x[a:a + CHUNK], y[a:a + CHUNK]
        best = sq_dist(xs, ys, centers[0, 0], centers[0, 1])
        lab = labels[a:a + CHUNK]
        lab[:] = 0
        for j in range(1, len(centers)):
            d = sq_dist(xs, ys, centers[j, 0], centers[j, 1])
            closer = d < best
            lab[closer] = j
            np.minimum(best, d, out=best)
    return labels


def grid_size(points: int) -> int:
    """Cells per side: about 64 points per cell, a power of two in [1, GRID_MAX]."""
    side = math.sqrt(max(points, 1) / 64)
    return int(min(GRID_MAX, 2 ** max(0, round(math.log2(max(side, 1.0))))))


def _integers(v: np.ndarray) -> np.ndarray:
    """Integer coordinates as an integer array: integer ids as they are, integer-valued floats as int64."""
    if v.dtype.kind in "iu":
        return v
    out = v.astype(np.int64)
    if not np.array_equal(out, v):
        raise ValueError("grid coordinates must be integers")
    return out


SUM_CHUNK = 1 << 22  # points summed per reduceat (their int64 copy stays this small)


def cell_sums(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Exact int64 sums of consecutive runs of the integers ``v`` that begin at ``starts`` (increasing,
    the last run to the end), an int64 copy of a few runs at a time, not of ``v``."""
    out = np.empty(len(starts), dtype=np.int64)
    i = 0
    while i < len(starts):
        a = int(starts[i])
        j = max(int(np.searchsorted(starts, a + SUM_CHUNK, side="left")), i + 1)
        b = int(starts[j]) if j < len(starts) else len(v)
        out[i:j] = np.add.reduceat(v[a:b].astype(np.int64), starts[i:j] - a)
        i = j
    return out


def _interval_dists(lo: np.ndarray, width: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per centre (rows) and cell interval [lo, lo+width] (columns): nearest and farthest 1-D distance."""
    c = c[:, None]
    hi = lo + width
    near = np.maximum(np.maximum(lo - c, c - hi), 0.0)
    far = np.maximum(np.abs(c - lo), np.abs(c - hi))
    return near, far


class PointGrid:
    """A worker's points sorted into g x g power-of-two cells (once), with exact per-cell counts and sums.

    Cell indices are exact (integer coordinates, power-of-two widths), so every point lies inside its
    cell's box.  :meth:`sure_owner` gives, per cell, the centre that is strictly nearest to every point
    of the box (by bounding-box distances and a relative margin), or -1.  A label from a sure cell is
    therefore the exact nearest centre, the same value :func:`assign` gives: the labels do not depend
    on the grid, so workers may build their grids from their own points.

    The points are kept in cell order (a counting sort), so the points of the cells that straddle a
    boundary are a few contiguous runs: a Lloyd step reads only those (a sure cell counts through its
    sums, its points' labels are never written), and the number of labels that changed is counted
    from the cells' owners and those points' kept labels.  ``x``/``y`` are the points in that order,
    as the integers they were parsed as (4 B each for int32 ids, not a float64's 8: a Lloyd step
    converts the few it reads); integer-valued floats are taken as int64.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, g: int | None = None) -> None:
        points = [x, y]
        del x, y
        self._build(points, g)

    @classmethod
    def taking(cls, points: list[np.ndarray]) -> PointGrid:
        """The grid of ``[x, y]``, taking the arrays out of the list: each goes once its sorted copy
        exists, so the sort holds the points about 1.5 times, not twice."""
        grid = cls.__new__(cls)
        grid._build(points, None)
        return grid

    def _build(self, points: list[np.ndarray], g: int | None) -> None:
        from scipy.sparse._sparsetools import coo_tocsr

        points[:] = [_integers(v) for v in points]
        x, y = points
        n = len(x)
        fits = n < 2**31 and np.can_cast(x.dtype, np.int32) and np.can_cast(y.dtype, np.int32)
        index = np.int32 if fits else np.int64  # (a uint32 id above 2**31 would wrap in int32)
        g = grid_size(n) if g is None else g
        lo = np.array([x.min(), y.min()], dtype=np.float64) if n else np.zeros(2)
        span = float(max(x.max() - lo[0], y.max() - lo[1]) + 1.0) if n else 1.0
        if span >= 2.0**52:  # differences would round: no sure cells, every point goes through assign()
            g = 1
        self.g, self.origin = g, lo
        self.width = 2.0 ** math.ceil(math.log2(max(span / g, 1.0)))
        cell = np.empty(n, dtype=index)
        for a in range(0, n, CHUNK):  # exact: (v - lo) is an integer below 2**52, width a power of two
            ix = ((x[a:a + CHUNK] - lo[0]) / self.width).astype(index)
            iy = ((y[a:a + CHUNK] - lo[1]) / self.width).astype(index)
            cell[a:a + CHUNK] = ix * g + iy
        del x, y
        cells = g * g
        ptr = np.empty(cells + 1, dtype=index)
        scratch = np.empty(n, dtype=np.int8)  # a stable counting sort by cell, moving 1 byte of data per point
        for _ in range(2):  # each coordinate sorted as the column of a counting sort: no index array
            v = points.pop(0).astype(index, copy=False)  # int32 ids as they are
            out = np.empty(n, dtype=index)
            coo_tocsr(cells, max(n, 1), n, cell, v, scratch, ptr, out, scratch)
            del v
            points.append(out)
        del cell, scratch
        self.x, self.y = points
        points.clear()
        self.start = ptr.astype(np.int64)
        self.count = np.diff(self.start)
        self.cell_stats = np.zeros((3, cells), dtype=np.int64)
        self.cell_stats[0] = self.count
        filled = np.flatnonzero(self.count)
        for row, v in ((1, self.x), (2, self.y)):
            self.cell_stats[row, filled] = cell_sums(v, self.start[filled])
        self.labels = np.zeros(n, dtype=np.int32)  # valid for the points of the cells that straddled last
        self.owner: np.ndarray | None = None  # per cell at the last step (-1: straddled); None before it

    def sure_owner(self, centers: np.ndarray) -> np.ndarray:
        """Per cell: the centre nearest to all of the cell's box by a relative margin, else -1 (int32)."""
        g, k = self.g, len(centers)
        if g == 1:
            return np.full(1, -1, dtype=np.int32)
        lo = np.arange(g) * self.width
        nx_, fx = _interval_dists(self.origin[0] + lo, self.width, centers[:, 0])
        ny_, fy = _interval_dists(self.origin[1] + lo, self.width, centers[:, 1])
        best = np.full((g, g), np.inf)
        second = np.full((g, g), np.inf)
        best_far = np.full((g, g), np.inf)
        owner = np.zeros((g, g), dtype=np.int32)
        for j in range(k):
            near = nx_[j, :, None] ** 2 + ny_[j, None, :] ** 2
            closer = near < best
            np.copyto(second, np.where(closer, best, np.minimum(second, near)))
            np.copyto(best_far, fx[j, :, None] ** 2 + fy[j, None, :] ** 2, where=closer)
            owner[closer] = j
            np.copyto(best, near, where=closer)
        owner[~(best_far * (1.0 + _MARGIN) < second)] = -1
        return owner.ravel()

    def points(self, cells: np.ndarray) -> np.ndarray:
        """Positions (in ``x``/``y``) of the points of ``cells``, cell after cell."""
        lens = self.count[cells]
        ends = np.cumsum(lens)
        at = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        at += np.repeat(self.start[cells] - (ends - lens), lens)
        return at

    def lloyd(self, centers: np.ndarray) -> tuple[np.ndarray, int]:
        """Exact (3, k) stats of one assignment and how many labels changed since the last (all, the first time)."""
        k = len(centers)
        owner, prev = self.sure_owner(centers), self.owner
        straddle = np.flatnonzero((owner < 0) & (self.count > 0))
        at = self.points(straddle)
        xs, ys = self.x[at], self.y[at]
        new = assign(xs, ys, centers)
        stats = cluster_stats(new, xs, ys, k)
        for c in range(k):
            stats[:, c] += self.cell_stats[:, owner == c].sum(axis=1)
        if prev is None:
            changed = len(self.x)
        else:
            sure = owner >= 0
            changed = int(self.count[sure & (prev >= 0) & (prev != owner)].sum())  # sure both times, moved
            were = np.flatnonzero(sure & (prev < 0) & (self.count > 0))  # sure now, straddled before
            changed += int(np.count_nonzero(self._labels(were, prev, self.points(were))
                                            != np.repeat(owner[were], self.count[were])))
            changed += int(np.count_nonzero(self._labels(straddle, prev, at) != new))
        self.labels[at] = new
        self.owner = owner
        return stats, changed

    def _labels(self, cells: np.ndarray, owner: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Labels of the points of ``cells`` (at positions ``at``) under the per-cell ``owner``: the
        cell's owner, or the point's kept label where the cell straddled."""
        out = np.repeat(owner[cells], self.count[cells])
        kept = out < 0
        out[kept] = self.labels[at[kept]]
        return out

    def all_labels(self) -> np.ndarray:
        """The last step's label of every point, in ``x``/``y`` order."""
        if self.owner is None:
            raise ValueError("no Lloyd step has run")
        out = np.repeat(self.owner, self.count)
        straddled = np.flatnonzero((self.owner < 0) & (self.count > 0))
        at = self.points(straddled)
        out[at] = self._labels(straddled, self.owner, at)
        return out

    def sse(self, centers: np.ndarray) -> np.ndarray:
        """Per-cluster sum of squared distances of the last step's clusters to ``centers``."""
        return within_sse(self.all_labels(), self.x, self.y, centers)


def exact_sums(labels: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of integer-valued ``v`` as exact int64 (float64 bincount over exact-size chunks)."""
    out = np.zeros(k, dtype=np.int64)
    if len(v) == 0:
        return out
    step = max(1, int(_EXACT // max(abs(float(v.min())), abs(float(v.max())), 1.0)))  # (abs of int32's min wraps)
    for a in range(0, len(v), step):
        out += np.rint(np.bincount(labels[a:a + step], weights=v[a:a + step], minlength=k)).astype(np.int64)
    return out


def cluster_stats(labels: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """int64 array (3, k): counts, sum x, sum y — exact, so any split of the points adds up the same."""
    return np.stack([np.bincount(labels, minlength=k).astype(np.int64),
                     exact_sums(labels, x, k), exact_sums(labels, y, k)])


def means(stats: np.ndarray, old: np.ndarray) -> np.ndarray:
    """New centres from reduced stats; an empty cluster keeps its old centre."""
    counts = stats[0]
    safe = np.maximum(counts, 1)
    new = np.stack([stats[1] / safe, stats[2] / safe], axis=1)
    return np.where((counts > 0)[:, None], new, old)


def sq_dist(x: np.ndarray, y: np.ndarray, cx: float | np.ndarray, cy: float | np.ndarray) -> np.ndarray:
    dx = x - cx
    dy = y - cy
    return dx * dx + dy * dy


def within_sse(labels: np.ndarray, x: np.ndarray, y: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Per-cluster sum of squared distances to ``centers`` (direct differences, no cancellation), a
    chunk at a time (no point-sized temporaries)."""
    k = len(centers)
    out = np.zeros(k)
    for a in range(0, len(x), CHUNK):
        lab = labels[a:a + CHUNK]
        out += np.bincount(lab, weights=sq_dist(x[a:a + CHUNK], y[a:a + CHUNK], centers[lab, 0], centers[lab, 1]),
                           minlength=k)
    return out


def calinski_harabasz(stats: np.ndarray, sse: np.ndarray) -> float:
    """CH from reduced (counts, sums) and per-cluster SSE to the cluster means (sklearn's definition)."""
    counts = stats[0]
    n, nonempty = int(counts.sum()), counts > 0
    k = int(nonempty.sum())
    if k < 2 or k >= n:
        raise UserError(f"Calinski-Harabasz needs 2 <= clusters < points (got {k} clusters, {n} points)")
    mean = stats[1:].sum(axis=1) / n
    cm = (stats[1:, nonempty] / counts[nonempty]).T
    between = float((counts[nonempty] * ((cm - mean) ** 2).sum(axis=1)).sum())
    within = float(sse.sum())
    return 1.0 if within == 0.0 else between * (n - k) / (within * (k - 1))


def ch_score(x: np.ndarray, y: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Single-process CH of given labels (equals sklearn.metrics.calinski_harabasz_score)."""
    stats = cluster_stats(labels, x, y, k)
    return calinski_harabasz(stats, within_sse(labels, x, y, means(stats, np.zeros((k, 2)))))


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


def blockwise_block(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[float, float] | None:
    """The seed's per-block step: sklearn KMeans(k, random_state) then CH; None if the block is too small."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if len(x) <= k:
        return None
    pts = np.stack([x, y], axis=1)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(pts)
    labels = km.labels_.astype(np.int32)
    if len(np.unique(labels)) < 2:
        return None
    return ch_score(x, y, labels, k), float(km.inertia_)


# ------------------------------------------------------------------------------- worker state
class KMeansPart:
    """One worker's points (global method) or blocks (blockwise method).

    The points stay as parsed (integer ids) for the k-means++ start, then move into the
    :class:`PointGrid` (in cell order) for Lloyd's steps."""

    def __init__(self, rank: int, world: int, info: InputInfo) -> None:
        self.rank, self.world, self.info = rank, world, info
        self.x = self.y = self.d2 = self.chunk_mass = self.grid = None

    def load(self) -> int:
        lo, hi = split_ranges(self.info, self.world)[self.rank]
        self.x, self.y = exact_ids(*read_range(self.info, lo, hi))
        return len(self.x)

    def blocks(self, block_bytes: int, k: int, seed: int) -> list[tuple[int, float, float, int]]:
        """Run the seed's KMeans on this worker's contiguous share of the fixed blocks."""
        blocks = block_ranges(self.info, block_bytes)
        cut = np.linspace(0, len(blocks), self.world + 1).round().astype(int)
        out = []
        for b in range(cut[self.rank], cut[self.rank + 1]):
            x, y = as_points(*read_range(self.info, *blocks[b]))
            res = blockwise_block(x, y, k, seed)
            if res is not None:
                out.append((b, res[0], res[1], len(x)))
        return out

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
def _blockwise_metrics(args: argparse.Namespace, results: list[tuple[int, float, float, int]], n_blocks: int
                       ) -> dict[str, Any]:
    results = sorted(results)
    if not results:
        raise UserError(f"no block had more than {args.k} points; use a smaller --k or bigger --block-mb")
    return {"method": "blockwise", "k": args.k, "ch_score": math.fsum(r[1] for r in results) / len(results),
            "inertia": math.fsum(r[2] for r in results), "centroids": None, "blocks": n_blocks,
            "blocks_skipped": n_blocks - len(results), "points": sum(r[3] for r in results)}


def _global_metrics(args: argparse.Namespace, stats: np.ndarray, centers: np.ndarray, sse: np.ndarray,
                    iters: int, done: bool) -> dict[str, Any]:
    return {"method": "global", "k": args.k, "ch_score": calinski_harabasz(stats, sse),
            "inertia": float(sse.sum()), "centroids": centers.tolist(), "iterations": iters,
            "converged": done, "stopped_by": "no label changed" if done else "max_iter",
            "points": int(stats[0].sum()), "cluster_sizes": stats[0].tolist()}


def verify(args: argparse.Namespace, info: InputInfo, metrics: dict[str, Any]) -> dict[str, Any]:
    """Re-run single-process and compare (global: centroids and CH; blockwise: the mean CH)."""
    if args.method == "blockwise":
        part = KMeansPart(0, 1, info)
        ref = _blockwise_metrics(args, part.blocks(args.block_mb << 20, args.k, args.seed),
                                 len(block_ranges(info, args.block_mb << 20)))
        err = abs(ref["ch_score"] - metrics["ch_score"]) / max(abs(ref["ch_score"]), 1e-300)
        return {"reference": "single-process blockwise", "error": err, "passed": err <= 1e-9}
    x, y = as_points(*read_range(info, info.data_start, info.size))
    ref = reference_kmeans(x, y, args.k, args.seed, args.max_iter)
    c, rc = np.asarray(metrics["centroids"]), ref["centroids"]
    err = float(np.abs(c - rc).max() / max(np.abs(rc).max(), 1e-300))
    err = max(err, abs(ref["ch_score"] - metrics["ch_score"]) / max(abs(ref["ch_score"]), 1e-300))
    same_stop = (ref["iterations"], ref["converged"]) == (metrics["iterations"], metrics["converged"])
    return {"reference": "single-process plain Lloyd (no grid)", "error": err, "reference_iterations": ref["iterations"],
            "reference_converged": ref["converged"], "passed": bool(err <= 1e-9 and same_stop)}


def _check_points(total: int, k: int, uri: str) -> None:
    if total == 0:
        raise UserError(f"input file has no edges: {uri}")
    if total <= k:
        raise UserError(f"k-means with --k {k} needs more than {k} points; {uri} has {total}")


def _record(args: argparse.Namespace, info: InputInfo, rec: dict, metrics: dict[str, Any]) -> None:
    rec["metrics"] = metrics
    rec["dataset"]["records"] = metrics["points"]
    if args.verify:
        with timer(rec["timings_s"], "verify"):
            rec["verification"] = verify(args, info, metrics)


def run(args: argparse.Namespace, info: InputInfo, rec: dict, comm: _dist.Comm) -> None:
    """One rank of k-means (every runtime, and one process for ``--framework reference``)."""
    t = rec["timings_s"]
    _dist.mark_startup(args, rec)
    rec["nodes"] = len(comm.hosts())
    part = KMeansPart(comm.rank, comm.world, info)
    lead = comm.rank == 0
    if args.method == "blockwise":
        with timer(t, "compute"):
            mine = comm.guard(part.blocks, args.block_mb << 20, args.k, args.seed)
            rows = np.concatenate(comm.allgather(np.array(mine, dtype=np.float64).reshape(-1))).reshape(-1, 4)
            res = [(int(b), float(ch), float(sse), int(n)) for b, ch, sse, n in rows]
        metrics = comm.guard(_blockwise_metrics, args, res, len(block_ranges(info, args.block_mb << 20)))
        if lead:
            _record(args, info, rec, metrics)
        return
    with timer(t, "load"):
        counts = [int(c[0]) for c in comm.allgather(np.array([comm.guard(part.load)], dtype=np.int64))]
    comm.guard(_check_points, sum(counts), args.k, info.uri)

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
        with timer(steps, "init"):
            init = kmeans_pp(args.k, args.seed, counts, point_at, add_center, pick)
        with timer(steps, "grid"):
            comm.guard(part.index)

    def step(c: np.ndarray) -> tuple[np.ndarray, int]:
        stats, changed = part.lloyd(c)
        red = comm.allreduce(np.concatenate([stats.ravel(), [changed]]).astype(np.int64))
        return red[:-1].reshape(3, -1), int(red[-1])

    label = f"k-means ({args.framework})"
    with timer(t, "compute"), _dist.maybe(lead, _dist.progress(label, args.max_iter)) as adv:
        stats, centers, iters, done = lloyd_loop(init, args.max_iter, step, adv)
        sse = comm.allreduce(part.sse(centers))
    if lead:
        _record(args, info, rec, _global_metrics(args, stats, centers, sse, iters, done))
        rec["metrics"]["build_steps_s"] = steps


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.kmeans", description=__doc__.split("\n")[0])
    _dist.add_common_args(p)
    p.add_argument("--method", choices=("blockwise", "global"), default="global")
    p.add_argument("--k", type=int, default=16, help="clusters (the seed: 16)")
    p.add_argument("--seed", type=int, default=42, help="k-means++ / sklearn random_state (the seed: 42)")
    p.add_argument("--max-iter", type=int, default=1000,
                   help="global: Lloyd iterations at most (it stops when no label changes; data_1 needs 446)")
    p.add_argument("--block-mb", type=int, default=20, help="blockwise: block size in MiB (the seed: 20)")
    args = p.parse_args(argv)
    if args.k < 2 or args.max_iter < 1 or args.block_mb < 1:
        p.error("--k >= 2, --max-iter >= 1 and --block-mb >= 1 please")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = {k: getattr(args, k) for k in ("method", "k", "seed", "max_iter", "block_mb")}
    return _dist.execute("kmeans", args, params, run)


if __name__ == "__main__":
    sys.exit(run_main(main))
