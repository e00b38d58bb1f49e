"""A graph's rows across ranks: what :mod:`workloads.pagerank`'s kernel multiplies (as gapbs's
builder.h is to its pr.cc).  The same code in every runtime; only ``comm`` moves data.

1. each rank parses its byte range of the file (:mod:`workloads.graphio`; :meth:`GraphPart.load`);
2. the ranks agree on the node set: an OR of bit-packed presence bitmaps when the id space is
   small next to the edge count (:func:`use_bitmap`), else a union of sorted unique ids -> dense ids
   by a rank query on the bitmap or a binary search, never a Python dict;
3. degrees are counted (summed over ranks) and nodes are renumbered by degree, highest first
   (:func:`degree_rank`): the hot entries of a vector then share cache lines, which makes the SpMV's
   random gathers 1.2-1.6x faster (perf-notes §4b); rows (destinations) are cut into contiguous
   blocks of equal SpMV cost (:func:`plan_rows`) and every rank sends each arc to the block's owner,
   in rounds of :data:`ROUND_EDGES` edges that leave the sender's memory as they go
   (:meth:`GraphPart.send_round`); the receiver, which knows from the degrees how many arcs each of
   its rows gets, appends each arc to the run of at most :data:`RUN_ROWS` rows it belongs to, as its
   column and its row within the run (6 B: :meth:`GraphPart.inbox`), so the edges still to send and
   the arcs received stay about one copy of the arcs (:func:`distribute` runs steps 2-3);
4. each rank builds the CSR pattern of its rows one of :data:`BUILD_PARTS` row blocks at a time
   (parallel arcs repeated; the long rows stored per column segment so their gathers stay in cache,
   :class:`RowBlock`), so the build's scratch is a fraction of the rank's arcs
   (:meth:`GraphPart.row_blocks`); :func:`spmv_blocks` multiplies them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from workloads.comm import Comm
from workloads.graphio import InputInfo, read_range, split_ranges, truncate
from workloads.record import UserError, timer

# The slices and rounds below keep the scratch that a step allocates again and again under 32 MiB, the
# largest block glibc's malloc keeps in its heap (the ceiling of its dynamic mmap threshold).  A
# larger block is mapped fresh and unmapped when freed, so every slice faulted its pages in again:
# rank 0's exchange on data_1 took 420 k page faults with rounds of 2^21 edges, 146 k with 2^20 (its
# sys time 1.07 -> 0.47 s), and row_bounds of 11.2 M rows 0.38 s in slices of 2^22 against 0.13 s
# in slices of 2^20 (docs/graph-performance.md, "Page faults").
DEGREE_CHUNK = 1 << 20  # nodes per slice of degree_rank's counting sort
DENSE_ID_LIMIT = 1 << 28  # ids below this may be relabelled through a bitmap of the id space ...
BITMAP_IDS_PER_EDGE = 8  # ... when max_id is at most this many times the edge count


# -------------------------------------------------------------------- node ids and the degree order
def check_ids(min_id: int, n_edges: int, uri: str) -> None:
    """An input with edges and non-negative ids, or one line saying what is wrong with it."""
    if n_edges == 0:
        raise UserError(f"input file has no edges: {uri}")
    if min_id < 0:
        raise UserError(f"{uri}: node ids must be non-negative (found {min_id})")


def use_bitmap(max_id: int, n_edges: int) -> bool:
    """Relabel through a bitmap of ids 0..max_id (:class:`BitRank`; a byte per id while it is
    filled) or through sorted unique ids (a sort of two ids per edge and a binary search per
    endpoint)?  The bitmap wins unless the ids are much sparser than the edges (SNAP's sparse ids on
    a small cut)."""
    return max_id < DENSE_ID_LIMIT and max_id <= BITMAP_IDS_PER_EDGE * max(n_edges, 1)


def presence_mask(src: np.ndarray, dst: np.ndarray, max_id: int) -> np.ndarray:
    """Bit-packed presence of ids 0..max_id in src or dst (an OR of two of them is the union);
    8x smaller than a byte map to send between workers."""
    mask = np.zeros(max_id + 1, dtype=np.uint8)
    mask[src] = 1
    mask[dst] = 1
    return np.packbits(mask, bitorder="little")


def local_unique(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Sorted unique ids, int64 whatever the parser gave (ranks must agree on one dtype)."""
    return np.unique(np.concatenate([src, dst])).astype(np.int64, copy=False)


class BitRank:
    """Dense ids (id order) from a packed presence bitmap by rank queries, ``.n`` of them: the dense id of ``v`` is the number of
    present ids below it, a prefix count per 64-bit word plus a popcount within the word.

    Nothing as long as the id space is built (a 4-byte index per id would be 0.5 GB at Friendster's
    ids), and the 1/64-size tables stay in cache, where an index's gathers would miss: 2-3x faster.
    """

    CHUNK = 1 << 20  # ids per vector step: the temporaries stay in cache

    def __init__(self, bits: np.ndarray) -> None:
        pad = (-len(bits)) % 8
        self.words = np.concatenate([bits, np.zeros(pad, np.uint8)]).view("<u8")  # bit i of word = id i
        counts = np.bitwise_count(self.words)
        self.prefix = np.zeros(len(self.words), dtype=np.int32)
        np.cumsum(counts[:-1], out=self.prefix[1:])
        self.n = int(self.prefix[-1]) + int(counts[-1]) if len(counts) else 0

    def __call__(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Dense ids (int32) of ``ids``, into ``out`` if given (``ids`` itself when int32: a slice of
        ``ids`` is read whole before its slice of ``out`` is written)."""
        out = np.empty(len(ids), dtype=np.int32) if out is None else out
        one = np.uint64(1)
        step = max(1, min(self.CHUNK, len(ids)))
        word, below, hit = np.empty(step, np.int64), np.empty(step, np.uint64), np.empty(step, np.uint64)
        for s in range(0, len(ids), step):  # into reused buffers: fresh temporaries fault pages in
            v = ids[s:s + step]
            w, b, h = word[:len(v)], below[:len(v)], hit[:len(v)]
            np.right_shift(v, 6, out=w)
            np.bitwise_and(v, 63, out=b, casting="unsafe")
            np.subtract(np.left_shift(one, b, out=b), one, out=b)  # the bits below v in its word
            np.bitwise_and(np.take(self.words, w, out=h), b, out=h)
            np.add(np.take(self.prefix, w), np.bitwise_count(h), out=out[s:s + step], casting="unsafe")
        return out


def relabel(arr: np.ndarray, node_set: BitRank | np.ndarray, dense: bool) -> np.ndarray:
    """Original ids -> dense int32 ids.  ``node_set`` is a :class:`BitRank` (dense) or sorted ids.

    int32 ids are overwritten in place (a rank's edges are not held twice: 1.6 GB per rank on
    ``data``); int64 ids are read into a new int32 array."""
    out = arr if arr.dtype == np.int32 else np.empty(len(arr), dtype=np.int32)
    if dense:
        return node_set(arr, out)
    step = BitRank.CHUNK
    for s in range(0, len(arr), step):  # searchsorted's int64 positions a slice at a time
        out[s:s + step] = np.searchsorted(node_set, arr[s:s + step])
    return out


def node_ids(node_set: np.ndarray, dense: bool) -> np.ndarray:
    """Dense id -> original int64 id."""
    if dense:
        return np.flatnonzero(np.unpackbits(node_set, bitorder="little")).astype(np.int64)
    return node_set.astype(np.int64)


def degree_rank(degree: np.ndarray) -> np.ndarray:
    """New dense id of every node: by degree, highest first, ties in id order (int32).

    A stable counting sort of 16-bit keys (degrees above 65535 tie, still deterministic), a slice of
    nodes at a time: each key's next id, and within a slice numpy's radix sort.  Sorted whole, its
    int64 order and scratch held ~0.9 GiB at once on `data` (41.5 M nodes), beside the rank's edges.
    """
    top = np.iinfo(np.uint16).max
    n = len(degree)
    key = (top - np.minimum(degree, top)).astype(np.uint16)
    counts = np.zeros(top + 1, dtype=np.int64)
    for a in range(0, n, DEGREE_CHUNK):
        counts += np.bincount(key[a:a + DEGREE_CHUNK], minlength=top + 1)
    nxt = np.zeros(top + 1, dtype=np.int64)  # each key's next id
    np.cumsum(counts[:-1], out=nxt[1:])
    rank = np.empty(n, dtype=np.int32)
    for a in range(0, n, DEGREE_CHUNK):
        k = key[a:a + DEGREE_CHUNK]
        order = np.argsort(k, kind="stable")
        ks = k[order]
        starts = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))  # each run of one key
        within = np.arange(len(ks)) - np.repeat(starts, np.diff(np.append(starts, len(ks))))
        rank[a + order] = nxt[ks] + within
        nxt += np.bincount(k, minlength=top + 1)
    return rank


COUNT_CHUNK = 1 << 22  # edge ends compared per slice when self-loops are taken off the degrees


def count_ids(ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` plus the occurrences of each id 0..len(out)-1 in ``ids``, in place.

    ``np.add.at`` with a one of ``out``'s own type (numpy's typed fast path; a Python ``1`` into int32
    takes the slow one, 20x slower) reads ``ids`` as they are: 0.09 s and no temporary for a rank's
    34 M edge ends on ``data_1``, where ``np.bincount`` copies its input as int64 and returns a new
    n-long int64 array per call (0.52 s and 329 MB above the rank's arrays, by 32 M-end slices)."""
    np.add.at(out, ids, out.dtype.type(1))
    return out


def renumber(values: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """A per-node array in the new numbering: out[rank[i]] = values[i]."""
    out = np.empty_like(values)
    out[rank] = values
    return out


# --------------------------------------------------------------------------- arcs and the row split
def make_arcs(src: np.ndarray, dst: np.ndarray, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Arcs (from, to).  Undirected: both directions, a self-loop once (as networkx counts it)."""
    if directed:
        return src, dst
    back = src != dst
    return np.concatenate([src, dst[back]]), np.concatenate([dst, src[back]])


WEIGHT_CHUNK = 1 << 20  # rows per slice while row weights are summed (8 MiB of float64)


def row_bounds(row_weight: np.ndarray, parts: int, cost: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> np.ndarray:
    """Cut rows 0..n into ``parts`` contiguous blocks of about equal weight (arcs, or ``cost`` of a slice
    of them); length parts+1.  The running sum is made a slice at a time, twice (the total, then the
    cuts): an n-long float64 sum beside the costs held 0.7 GB at once on `data`."""
    n = len(row_weight)

    def sums() -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, n, WEIGHT_CHUNK):
            w = row_weight[a:a + WEIGHT_CHUNK]
            yield a, np.cumsum(w if cost is None else cost(w), dtype=np.float64)

    total = 0.0
    for _, c in sums():
        total = float(c[-1]) + total
    targets = total * np.arange(1, parts) / parts
    cuts = np.full(len(targets), n, dtype=np.int64)
    todo = np.ones(len(targets), dtype=bool)
    running = 0.0
    for a, c in sums():  # a target's cut: after the first row whose running sum reaches it
        c += running
        hit = todo & (targets <= c[-1])
        cuts[hit] = a + np.searchsorted(c, targets[hit], side="left") + 1
        todo &= ~hit
        running = float(c[-1])
    bounds = np.concatenate([[0], np.minimum(cuts, n), [n]]).astype(np.int64)
    return np.maximum.accumulate(bounds)


def split_edges(src: np.ndarray, dst: np.ndarray, bounds: np.ndarray, directed: bool) -> list[np.ndarray]:
    """The arcs of edges (src, dst) grouped by the owner of their destination row: one int32 array
    ``[to..., from...]`` per owner, rows in the owner's numbering (``to - lo``).

    Undirected: the arcs ``make_arcs`` gives (both ways, a self-loop once), written straight from the
    edges into each owner's array, without the 2x-long arc arrays in between.
    """
    back = None if directed else src != dst
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        into = (dst >= lo) & (dst < hi)  # arcs src -> dst owned here
        parts = [(into, dst, src)]
        if back is not None:
            out = (src >= lo) & (src < hi)
            out &= back  # arcs dst -> src owned here
            parts.append((out, src, dst))
        counts = [int(np.count_nonzero(sel)) for sel, _, _ in parts]
        total = sum(counts)
        piece = np.empty(2 * total, dtype=np.int32)
        at = 0
        for (sel, to, frm), c in zip(parts, counts, strict=True):
            np.compress(sel, to, out=piece[at:at + c])
            np.compress(sel, frm, out=piece[total + at:total + at + c])
            at += c
        piece[:total] -= lo
        pieces.append(piece)
    return pieces


# ----------------------------------------------------------------- CSR row blocks and their product
SPMV_CHUNK_ARCS = 1 << 20  # arcs per csr_matvec call: the 1.0s it reads are one shared buffer (8 MB)
KEY_CHUNK_ARCS = 1 << 22  # arcs per slice while a block's sort key is made in place (16 MiB temporaries)
ROUND_EDGES = 1 << 20  # edges a worker sends per exchange round (undirected: <= 16 MiB of arcs in flight)
BUILD_PARTS = 16  # a worker's rows are built as this many row blocks of equal arcs, one at a time ...
RUN_ROWS = 1 << 16  # ... each received as runs of at most this many rows (a row within its run: uint16)
HUB_ARCS = 16  # rows with at least this many arcs are multiplied one column segment at a time ...
COLUMN_SEGMENTS = 8  # ... in this many segments of equal arc counts (:class:`RowBlock`)


def column_cuts(col_weight: np.ndarray, segments: int) -> np.ndarray:
    """Inner cuts (length segments-1) of columns 0..n into segments of about equal weight (arcs)."""
    return row_bounds(col_weight, segments)[1:-1]


def column_segments(cuts: np.ndarray, n: int) -> np.ndarray:
    """The segment of every column 0..n (a byte each where that holds them: a table that stays in cache)."""
    seg = np.zeros(n, dtype=np.uint8 if len(cuts) < 255 else np.int32)
    for c in cuts:
        seg[c:] += 1
    return seg


class RowBlock:
    """A worker's rows as a CSR pattern (a 1.0 per arc, parallel arcs repeated), multiplied
    cache-blocked where that pays: the leading ``hubs`` rows (degree order puts the long rows first)
    are stored once per column segment, so each pass gathers from one slice of ``v`` that stays in
    cache (Ligra/gapbs-style blocking: 1.4-1.7x on hub rows, perf-notes and docs/graph-performance.md);
    the short rows after them, where a pass per segment would cost more than the misses it saves,
    are one plain CSR.  Row ``r < hubs`` of segment ``s`` is row ``s*hubs + r`` of one CSR, the short
    row ``r`` is row ``segments*hubs + r - hubs``: one counting sort builds it all, every pass is a
    view, and scipy's ``csr_matvec`` adds into ``out``, so the segments need no buffers.

    The pattern's values are all 1.0, which csr_matvec reads one per arc: rather than 8 B per arc of
    them, every pass is cut into row ranges of at most ``SPMV_CHUNK_ARCS`` arcs (a longer row alone) with
    their indptr rebased to 0, and every call reads the same buffer of 1.0s (it stays in cache).  The
    block costs 4 B per arc (its column) instead of 12.
    """

    def __init__(self, rows: int, arcs: list[np.ndarray], n: int, cuts: np.ndarray | None = None,
                 expect: np.ndarray | None = None, segment: np.ndarray | None = None) -> None:
        """``arcs`` is ``[to, frm]``, taken out of the list and over (int32 ``to`` is overwritten with the
        sort key): the block's arrays replace them in memory
        (at most ~13 B per arc while it is built: the sort key, made in place of ``to``, the sources, the
        block's columns and one byte of scratch).  ``expect``: every row's arc count, checked;
        ``segment``: :func:`column_segments` of ``cuts``, when the caller keeps it for several blocks."""
        from scipy.sparse._sparsetools import coo_tocsr

        to, frm = (a.astype(np.int32, copy=False) for a in arcs)
        arcs.clear()
        self.rows, self.n, self.nnz = rows, n, len(frm)
        cuts = np.empty(0, np.int64) if cuts is None else cuts
        self.segments = len(cuts) + 1
        counts = count_ids(to, np.zeros(rows, dtype=np.int64))
        if expect is not None and not np.array_equal(counts, expect):
            r = int(np.flatnonzero(counts != expect)[0])
            raise ValueError(f"row {r} of a block has {int(counts[r])} arcs, its degree says {int(expect[r])}")
        short = np.flatnonzero(counts < HUB_ARCS)
        del counts
        self.hubs = int(short[0]) if len(short) else rows
        if self.segments == 1 or self.hubs == 0 or self.segments * rows >= 2**31:
            self.segments, self.hubs = 1, 0
        else:
            seg = column_segments(cuts, n) if segment is None else segment
            short_rows = np.int32((self.segments - 1) * self.hubs)
            for lo in range(0, self.nnz, KEY_CHUNK_ARCS):  # the sort key in place of `to`, a slice at a time
                t = to[lo:lo + KEY_CHUNK_ARCS]
                t += np.where(t < self.hubs, seg[frm[lo:lo + KEY_CHUNK_ARCS]].astype(np.int32) * self.hubs, short_rows)
        key = to
        del to
        key_rows = self.segments * self.hubs + rows - self.hubs
        self.indptr = np.empty(key_rows + 1, dtype=np.int32)
        self.indices = np.empty(self.nnz, dtype=np.int32)
        scratch = np.empty(self.nnz, dtype=np.int8)  # the scatter moves 1 byte per arc, not 8
        coo_tocsr(key_rows, n, self.nnz, key, frm, scratch, self.indptr, self.indices, scratch)
        del key, frm, scratch
        self.chunks = self._chunks()
        del self.indptr  # each chunk holds its rows' rebased part of it
        longest = max((len(c.columns) for c in self.chunks), default=0)
        self.ones = np.ones(max(longest, 1))
        for c in self.chunks:
            c.values = self.ones[:len(c.columns)]

    def share_ones(self, ones: np.ndarray) -> None:
        """Read the 1.0s from ``ones`` (as long as the longest chunk at least): one buffer for all of
        a worker's blocks."""
        self.ones = ones
        for c in self.chunks:
            c.values = ones[:len(c.columns)]

    def _passes(self) -> list[tuple[np.ndarray, int, int]]:
        """(indptr view, first row, rows) of each pass: the hub rows once per column segment, then the rest."""
        h, s = self.hubs, self.segments
        out = [(self.indptr[i * h:(i + 1) * h + 1], 0, h) for i in range(s)] if h else []
        return [*out, (self.indptr[s * h:], h, self.rows - h)]

    def _chunks(self) -> list[Chunk]:
        """Every pass cut into row ranges of at most SPMV_CHUNK_ARCS arcs (one longer row alone)."""
        chunks = []
        for ptr, first, count in self._passes():
            r = 0
            while r < count:
                a0 = int(ptr[r])
                r1 = int(np.searchsorted(ptr, a0 + SPMV_CHUNK_ARCS, side="right")) - 1  # ptr[r1] <= a0 + chunk
                r1 = min(max(r1, r + 1), count)
                a1 = int(ptr[r1])
                chunks.append(Chunk(np.subtract(ptr[r:r1 + 1], a0, dtype=np.int32), first + r,
                                    self.indices[a0:a1]))
                r = r1
        return chunks

    def perturb(self) -> None:
        """The first arc counts twice (``--inject-fault``: a wrong kernel that verification must catch)."""
        c = next((c for c in self.chunks if len(c.columns)), None)
        if c is not None:
            c.values = c.values.copy()
            c.values[0] = 2.0

    def todense(self) -> np.ndarray:
        """The matrix (tests)."""
        m = np.zeros((self.rows, self.n))
        for c in self.chunks:
            for r in range(len(c.indptr) - 1):
                lo, hi = c.indptr[r], c.indptr[r + 1]
                np.add.at(m[c.first + r], c.columns[lo:hi], c.values[lo:hi])
        return m


@dataclass
class Chunk:
    """Rows ``first .. first+len(indptr)-2`` of a :class:`RowBlock` pass: their indptr (from 0), their
    arcs' columns (a view of the block's) and the values csr_matvec reads (a view of the shared 1.0s)."""

    indptr: np.ndarray
    first: int
    columns: np.ndarray
    values: np.ndarray | None = None


def csr_pattern(rows: int, to: np.ndarray, frm: np.ndarray, n: int, cuts: np.ndarray | None = None) -> RowBlock:
    """The worker's rows (``to`` in 0..rows-1) as a :class:`RowBlock`, hub rows split at column ``cuts``;
    ``to`` and ``frm`` are copied (the block would take int32 arrays over)."""
    return RowBlock(rows, [np.array(to, dtype=np.int32), np.array(frm, dtype=np.int32)], n, cuts)


@contextmanager
def small_pages() -> Iterator[None]:
    """Arrays allocated here get 4 kB pages.  numpy asks for transparent huge pages on every large
    array; they pay where a long-lived table is read at random (the degree order's ids in the
    exchange, the vector every SpMV gathers from: more of it within the TLB's reach), and cost
    elsewhere:

    * an array filled at many places at once (:meth:`GraphPart.inbox`) would hold a 2 MB page per
      place, mostly empty;
    * an array written once and read in order (the parsed edges, the presence bitmap, the CSR
      blocks) gains nothing from them, and a huge page can be slow to fault in on a virtual machine:
      1.75 s per GiB against 0.36-0.46 s in 4 kB pages on this project's 2-core VMs (2026-12-06; on
      data_1 the load 3.0-3.5 -> 2.5-3.0 s, the node set 0.85 -> 0.55 s, the CSR build 2.8-3.2 ->
      2.2-2.4 s).

    (numpy's switch is private: without it, this does nothing.)"""
    switch = getattr(getattr(np, "_core", None), "multiarray", None)
    switch = getattr(switch, "_set_madvise_hugepage", None)
    before = switch(False) if switch else None
    try:
        yield
    finally:
        if switch:
            switch(before)


def spmv_blocks(blocks: list[tuple[int, RowBlock]], v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = rows @ v`` for a worker's row blocks, ``(first row, block)`` each, into ``out``."""
    for first, block in blocks:
        spmv(block, v, out[first:first + block.rows])
    return out


def spmv(block: RowBlock, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = block @ v`` into a preallocated vector (no 8 B/row allocation per iteration)."""
    from scipy.sparse._sparsetools import csr_matvec

    out.fill(0.0)
    for c in block.chunks:
        rows = len(c.indptr) - 1
        csr_matvec(rows, block.n, c.indptr, c.columns, c.values, v, out[c.first:c.first + rows])
    return out


# ------------------------------------------------------------------------------------- the row plan
def plan_rows(counts: np.ndarray, directed: bool, workers: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From reduced degree counts: (degree rank, out-degrees renumbered, every row's arcs (its
    in-degree; undirected: its degree) renumbered, row block bounds)."""
    n = len(counts) // (2 if directed else 1)
    outdeg, indeg = counts[:n], counts[n:] if directed else counts[:n]
    rank = degree_rank(outdeg + indeg if directed else outdeg)
    row_arcs = renumber(indeg, rank)
    narrow = np.int32 if len(outdeg) == 0 or outdeg.max() < 2**31 else np.int64  # kept through the run
    return rank, renumber(outdeg.astype(narrow, copy=False), rank), row_arcs, row_bounds(row_arcs, workers, row_cost)


ROW_COST = 3.0  # SpMV cost of a row (its loop, indptr, out) in plain arcs: ~30 ns against ~11 ns an arc
HUB_ARC_COST = 0.8  # an arc of a hub row, multiplied cache-blocked (:class:`RowBlock`), in plain arcs


def row_cost(arcs: np.ndarray) -> np.ndarray:
    """Each row's SpMV cost in plain arcs, from its arc count: what :func:`row_bounds` balances, so
    the worker with the short rows (many of them, each a loop and a store) is not the slowest."""
    return np.where(arcs >= HUB_ARCS, HUB_ARC_COST, 1.0) * arcs + ROW_COST


# ------------------------------------------------------------------------------------ a rank's rows
class GraphPart:
    """One rank's share of a graph: its byte range of the file, then its edges relabelled, then the
    arcs of its rows (received from every rank), then those rows as CSR row blocks."""

    def __init__(self, rank: int, world: int, info: InputInfo, directed: bool) -> None:
        self.rank, self.world, self.info, self.directed = rank, world, info, directed
        self.src = self.dst = None
        self.dense = True

    def load(self) -> tuple[int, int, int]:
        """Parse this rank's byte range: (edges, smallest id, largest id); (0, 0, -1) for none."""
        lo, hi = split_ranges(self.info, self.world)[self.rank]
        with small_pages():  # read in order from here on
            self.src, self.dst = read_range(self.info, lo, hi)
        if len(self.src) == 0:
            return 0, 0, -1
        return len(self.src), int(min(self.src.min(), self.dst.min())), int(max(self.src.max(), self.dst.max()))

    def node_set(self, max_id: int, dense: bool) -> np.ndarray:
        """This worker's ids: a packed bitmap (``dense``, see :func:`use_bitmap`) or sorted unique ids."""
        self.dense = dense
        with small_pages():  # filled once, gone after the step
            if self.dense:
                return presence_mask(self.src, self.dst, max_id)
            return local_unique(self.src, self.dst)

    def degrees(self, node_set: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        """Relabel to dense ids; return local [outdeg] (undirected: the degree) or [outdeg, indeg] as
        ``dtype`` (int32 where the run's edge count bounds every sum: half the bytes to reduce)."""
        lookup = BitRank(node_set) if self.dense else node_set
        n = lookup.n if self.dense else len(node_set)
        s, d = relabel(self.src, lookup, self.dense), relabel(self.dst, lookup, self.dense)
        del lookup
        self.src, self.dst = s, d
        out = count_ids(s, np.zeros(n, dtype))
        if not self.directed:  # arcs both ways, a self-loop once: no copy of the non-loop ends
            count_ids(d, out)
            for a in range(0, len(s), COUNT_CHUNK):
                ends = s[a:a + COUNT_CHUNK]
                np.subtract.at(out, ends[ends == d[a:a + COUNT_CHUNK]], out.dtype.type(1))
            return out
        return np.concatenate([out, count_ids(d, np.zeros(n, dtype))])

    def inbox(self, bounds: np.ndarray, row_arcs: np.ndarray) -> int:
        """Make room for the arcs of this worker's rows, which arrive in any order: its rows are cut
        into :data:`BUILD_PARTS` parts of about equal arcs (built one at a time) and each part into
        runs of at most :data:`RUN_ROWS` rows; a run's slots (as many as the reduced degrees give its
        rows: ``row_arcs``, every row's arcs in the degree numbering) are filled in arrival order with
        each arc's column (int32) and its row within the run (uint16): 6 B per arc, the runs one after
        another in two arrays whose pages are touched only as arcs land.  Returns the number of rounds
        this worker needs to send its edges."""
        self.lo, self.hi = int(bounds[self.rank]), int(bounds[self.rank + 1])
        self.row_arcs = row_arcs[self.lo:self.hi].copy()
        rows = len(self.row_arcs)
        self.cuts = row_bounds(self.row_arcs, BUILD_PARTS)  # in this worker's row numbering
        self.run_rows = np.unique(np.concatenate([self.cuts, np.arange(0, rows, RUN_ROWS)]))  # each run's first row
        run_of_row = np.repeat(np.arange(len(self.run_rows) - 1), np.diff(self.run_rows))
        self.run_of_row = run_of_row.astype(np.int16 if len(self.run_rows) <= 2**15 else np.int32)
        starts = np.concatenate([[0], np.cumsum(self.row_arcs, dtype=np.int64)])[self.run_rows]
        self.run_arcs = starts  # each run's first slot; its end is the next run's first
        self.fill = starts[:-1].copy()  # each run's next free slot
        with small_pages():  # a run's front would touch a whole 2 MB huge page: ~0.9 GB over data's runs
            self.cols = np.empty(int(starts[-1]), np.int32)
            self.within = np.empty(int(starts[-1]), np.uint16)
        return -(-len(self.src) // ROUND_EDGES)

    def send_round(self, rank: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
        """The arcs of this worker's last :data:`ROUND_EDGES` edges, renumbered by degree and grouped
        by the owner of their row (:func:`split_edges`); those edges leave memory here, so the edges
        still to send and the arcs received so far together stay about one copy of the arcs."""
        keep = max(len(self.src) - ROUND_EDGES, 0)
        src, dst = rank[self.src[keep:]], rank[self.dst[keep:]]
        self.src, self.dst = truncate(self.src, keep), truncate(self.dst, keep)
        return split_edges(src, dst, bounds, self.directed)

    def receive(self, pieces: list[np.ndarray]) -> None:
        """Put the arcs of one round (``[to..., from...]`` from each worker, emptied) after what their
        runs hold: a counting sort by run (scipy's ``coo_tocsr``, a few hundred runs) and one scatter
        per array."""
        from scipy.sparse._sparsetools import coo_tocsr

        runs = len(self.run_rows) - 1
        while pieces:
            piece = pieces.pop(0)
            c = len(piece) // 2
            to, frm = piece[:c], piece[c:]
            run = self.run_of_row[to].astype(np.int32)
            within = (to - self.run_rows[run]).astype(np.uint16)
            del to
            ptr, cols, rows = np.empty(runs + 1, np.int32), np.empty(c, np.int32), np.empty(c, np.uint16)
            coo_tocsr(runs, 1, c, run, frm, within, ptr, cols, rows)
            del run, frm, within, piece
            got = np.diff(ptr)
            dest = np.repeat(self.fill - ptr[:-1], got)  # a run's next slot, less the index of its first arc here
            dest += np.arange(c)
            self.cols[dest] = cols  # (a run given more arcs than its degrees: an IndexError or build's check)
            self.within[dest] = rows
            self.fill += got

    def row_blocks(self, col_weight: np.ndarray) -> list[tuple[int, RowBlock]]:
        """The CSR pattern of this rank's rows as ``(first row, block)`` pairs, one part at a time from the
        last (:class:`RowBlock` takes the part's arcs over and the arrays they came from shrink: only one
        part's scratch exists at a time); the hub rows' column segments of equal ``col_weight`` (every
        column's arcs: the out-degrees, renumbered)."""
        n = len(col_weight)
        col_cuts = column_cuts(col_weight, COLUMN_SEGMENTS)
        segment = column_segments(col_cuts, n)  # one table for every block
        if not np.array_equal(self.fill, self.run_arcs[1:]):
            r = int(np.flatnonzero(self.fill != self.run_arcs[1:])[0])
            raise RuntimeError(f"rank {self.rank}: rows {self.lo + self.run_rows[r]}..{self.lo + self.run_rows[r + 1]} "
                               f"received {int(self.fill[r] - self.run_arcs[r])} arcs, their degrees say "
                               f"{int(self.run_arcs[r + 1] - self.run_arcs[r])}")
        del self.fill, self.run_of_row
        blocks = []
        for a, b in reversed(list(zip(self.cuts[:-1], self.cuts[1:], strict=True))):
            first, last = np.searchsorted(self.run_rows, [a, b])
            lo, hi = int(self.run_arcs[first]), int(self.run_arcs[last])
            to = self.within[lo:hi].astype(np.int32)
            self.within = truncate(self.within, lo)
            for r in range(first, last):  # rows within their run -> rows of the part
                to[self.run_arcs[r] - lo:self.run_arcs[r + 1] - lo] += self.run_rows[r] - a
            arcs = [to, self.cols[lo:hi]]
            del to
            with small_pages():  # read in order by every SpMV
                blocks.append((int(a), RowBlock(int(b - a), arcs, n, col_cuts, self.row_arcs[a:b], segment)))
            self.cols = truncate(self.cols, lo)  # (the block took its view of these over)
        blocks.reverse()
        del self.cols, self.within, self.row_arcs, self.run_rows, self.run_arcs, segment
        ones = max((blk.ones for _, blk in blocks), key=len, default=np.ones(1))
        for _, blk in blocks:
            blk.share_ones(ones)
        return blocks


@dataclass
class Rows:
    """What :func:`distribute` leaves every rank beside its part's received arcs."""

    rank: np.ndarray  # every node's id in the degree order (the rows' numbering)
    outdeg: np.ndarray | None  # out-degrees in that numbering (the columns' arcs)
    bounds: np.ndarray  # rank r's rows are bounds[r]..bounds[r+1]
    node_set: np.ndarray  # the packed presence bitmap (dense) or the sorted unique ids
    dense: bool


def distribute(part: GraphPart, comm: Comm, n_edges: int, max_id: int, steps: dict[str, float],
               peaks: dict[str, int] | None = None) -> Rows:
    """Steps 2-3 of the module docstring on every rank, each timed into ``steps`` (and its memory
    high-water mark into ``peaks``): the node set, the degrees and the degree order, the row split, the
    arcs' exchange into ``part``'s runs."""
    with timer(steps, "node_set", peaks):
        dense = use_bitmap(max_id, n_edges)
        local = comm.guard(part.node_set, max_id, dense)
        node_set = comm.allreduce(local, "bor") if dense else np.unique(np.concatenate(comm.allgather(local)))
        del local
    with timer(steps, "degrees", peaks):  # (the reduced counts, n or 2n of them, are not kept)
        counts = np.int32 if 2 * n_edges < 2**31 else np.int64  # a node's arcs are at most 2 per edge
        rank, outdeg, row_arcs, bounds = plan_rows(comm.allreduce(comm.guard(part.degrees, node_set, counts)),
                                                   part.directed, comm.world)
    with timer(steps, "exchange", peaks):
        rounds = comm.guard(part.inbox, bounds, row_arcs)
        del row_arcs
        for _ in range(int(comm.allreduce(np.array([rounds], dtype=np.int64), "max")[0])):
            comm.guard(part.receive, comm.alltoall(comm.guard(part.send_round, rank, bounds)))
    return Rows(rank, outdeg, bounds, node_set, dense)
