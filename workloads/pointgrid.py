"""Exact nearest-centre assignment of 2-D integer points, grid-filtered: the data structure under k-means'
Lloyd step (:mod:`workloads.kmeans` holds the kernel, its verifier and main).

A worker sorts its points once into a g x g grid of power-of-two cells with exact per-cell counts and
sums (:class:`PointGrid`).  Per step, a cell whose every point is provably nearest to one centre
(bounding-box distances, with a relative margin far above rounding) takes that centre wholesale, its
points counted through the cell's sums and never read; only the points of the few cells that straddle
a Voronoi boundary are compared with every centre (:func:`assign`, by direct differences).  Labels
are the exact nearest centre (ties -> lowest index) and sums are exact integers
(:func:`cluster_stats`), so any split of the points adds up to the same centres.

The points are the edge list's (node1, node2) id pairs as float64 coordinates, exact because every
id is checked to lie within +-2**53 (:func:`as_points`).
"""
from __future__ import annotations

import math

import numpy as np

from workloads.record import UserError

CHUNK = 1 << 16  # points per chunk of elementwise work (temporaries stay in cache)
GRID_MAX = 512  # at most GRID_MAX x GRID_MAX cells per worker
_EXACT = float(2**53)
_MARGIN = 1e-9  # relative: a cell is "sure" only if its nearest centre wins by this much everywhere in it


def id_extent(a: np.ndarray, b: np.ndarray) -> int:
    """The largest |id| in the two columns (0 for none), checked to keep float64 coordinates exact
    (below 2**53)."""
    if len(a) == 0:
        return 0
    # min/max as Python ints, not np.abs: abs(INT64_MIN) overflows to INT64_MIN and would pass
    extent = max(-int(min(a.min(), b.min())), int(max(a.max(), b.max())))
    if extent >= 2**53:
        raise UserError("k-means needs every node id within +-2**53 to keep coordinates exact; "
                        "renumber the ids")
    return extent


def as_points(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids -> float64 coordinates (exact below 2**53: :func:`id_extent` checks)."""
    id_extent(a, b)
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
