"""Fast tests of the graph workloads' pure functions: reader, relabelling, PageRank and k-means kernels, data."""
from __future__ import annotations

import gc
import gzip
import os

import networkx as nx
import numpy as np
import pyarrow.fs as pafs
import pytest
from sklearn.metrics import calinski_harabasz_score

from workloads import data, graphbuild, graphio, harness, kmeans, pagerank, pagerank_seed, pointgrid
from workloads.record import UserError


def write(tmp_path, text: str, name: str = "g.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------- reader
def test_byte_ranges_own_every_line_exactly_once(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 10**12, 5000), rng.integers(0, 10**6, 5000)
    p = write(tmp_path, "node1,node2\n" + "".join(f"{x},{y}\n" for x, y in zip(a, b, strict=True)))
    info = graphio.inspect_input(str(p))
    assert info.data_start == len("node1,node2\n")
    for parts in (1, 2, 3, 7, 64):
        got = [graphio.read_range(info, lo, hi) for lo, hi in graphio.split_ranges(info, parts)]
        assert np.array_equal(np.concatenate([g[0] for g in got]), a)
        assert np.array_equal(np.concatenate([g[1] for g in got]), b)

    # the fixed blocks (the seed's batches): any rank count shares them out whole, in order, each once
    blocks = graphio.block_ranges(info, 4096)
    assert len(blocks) > 7 and blocks[0][0] == info.data_start and blocks[-1][1] == info.size
    for world in (1, 2, 3, 7, len(blocks) + 2):
        shares = [graphio.rank_blocks(info, 4096, r, world) for r in range(world)]
        assert [b for share in shares for b in share] == list(enumerate(blocks))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_reader_keeps_int64_ids_exact_and_accepts_no_header(tmp_path):
    p = write(tmp_path, "9007199254740993,1\n2,4294967297\n")  # 2**53+1 is not a float64
    info = graphio.inspect_input(str(p))
    src, dst = graphio.read_range(info, info.data_start, info.size)
    assert info.data_start == 0
    assert src.dtype == np.int64 and src[0] == 2**53 + 1 and dst[1] == 2**32 + 1

def test_parsed_edges_are_numpy_memory_and_leave_nothing_in_arrows_pool(tmp_path, monkeypatch):
    """A rank keeps its edges for its whole run: the columns are copied out of the table into numpy's
    own memory, in int32 or int64 as parsed, and Arrow's pool holds nothing once they are returned.
    (Before, ``to_numpy`` left them in Arrow's pool: 0.4 GiB more per rank through a data_1 run.)"""
    import pyarrow as pa

    monkeypatch.setattr(graphio, "_PARSE_BLOCK", 1 << 12)  # several chunks per column
    rng = np.random.default_rng(5)
    pool = pa.default_memory_pool()
    for high, dtype in ((2**31 - 1, np.int32), (2**40, np.int64)):
        a, b = rng.integers(0, high, 3000), rng.integers(0, high, 3000)
        p = write(tmp_path, "".join(f"{x},{y}\n" for x, y in zip(a, b, strict=True)))
        info = graphio.inspect_input(str(p))
        gc.collect()  # Arrow objects of earlier tests, freed by a collection inside the window, would count
        gc.disable()
        try:
            before = pool.bytes_allocated()
            src, dst = graphio.read_range(info, info.data_start, info.size)
            after = pool.bytes_allocated()
        finally:
            gc.enable()
        assert after == before  # the parse ran in this thread: nothing is freed later
        for got, want in ((src, a), (dst, b)):
            assert got.dtype == dtype and got.flags.owndata and np.array_equal(got, want)


def test_a_parse_in_another_thread_leaves_only_its_edges_resident(tmp_path):
    """A Ray rank runs in an actor thread, not its process's main thread.  Parsed there, a load must
    leave only its arrays resident: with Arrow's threads parsing, 245-271 MiB stayed beside 45 MiB
    of edges here (0.5-1.0 GiB more per rank on data_1); parsed in the calling thread, the arrays."""
    import threading

    import pyarrow as pa
    import pyarrow.csv as pacsv

    n, rng = 6_000_000, np.random.default_rng(3)
    path = tmp_path / "g.csv"
    pacsv.write_csv(pa.table({"a": rng.integers(0, 2**31 - 1, n), "b": rng.integers(0, 2**31 - 1, n)}),
                    str(path), pacsv.WriteOptions(include_header=False))
    info = graphio.inspect_input(str(path))

    def anon() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("RssAnon")).split()[1]) << 10

    out: list = []
    before = anon()
    reader = threading.Thread(target=lambda: out.append(graphio.read_range(info, info.data_start, info.size)))
    reader.start()
    reader.join()
    grown = anon() - before
    edges = sum(a.nbytes for a in out[0])
    assert len(out[0][0]) == n
    assert grown <= edges + (32 << 20), f"{grown >> 20} MiB resident after parsing {edges >> 20} MiB of edges"


_PARSE = """
import io

import pyarrow as pa
import pyarrow.csv as pacsv

from workloads import graphio

n, rng = 8_000_000, np.random.default_rng(7)
a, b = rng.integers(0, 2**31 - 1, n), rng.integers(0, 2**31 - 1, n)
out = io.BytesIO()
pacsv.write_csv(pa.table({"a": a, "b": b}), out, pacsv.WriteOptions(include_header=False))
buf = out.getvalue()
del out
assert reset_peak_rss()  # VmHWM from here
base = status("VmRSS")
src, dst = graphio.parse_edges(buf, None, 0)
print(json.dumps({"n": n, "peak": peak_rss() - base, "kept": status("VmRSS") - base,
                  "same": bool(np.array_equal(src, a) and np.array_equal(dst, b)), "dtype": str(src.dtype)}))
"""


def test_a_parse_holds_its_edges_about_once():
    """A rank's parse is its first peak: parsed whole into Arrow's columns and then copied out, it held
    the edges twice and more (29.6 B per edge here; ~16 B, 3.1 GiB, per rank on `data` over 3 nodes);
    parsed a block at a time into arrays sized from the line count, 8 B per edge (two int32s) and a
    block's scratch, which does not grow with the input (11.2 B per edge here, 64 + 26 MB)."""
    got = resident_peak(_PARSE)
    n = got["n"]
    assert got["same"] and got["dtype"] == "int32"
    assert got["peak"] <= 8 * n + (40 << 20), f"{got['peak'] / n:.1f} B per edge at the peak"
    assert got["kept"] <= 8 * n + (16 << 20), f"{got['kept'] / n:.1f} B per edge kept"


def test_malformed_line_names_file_line_and_offset(tmp_path):
    p = write(tmp_path, "node1,node2\n1,2\n3,4\n5;6\n7,8\n")
    info = graphio.inspect_input(str(p))
    with pytest.raises(UserError) as exc:
        graphio.read_range(info, info.data_start, info.size)
    msg = str(exc.value)
    offset = len("node1,node2\n1,2\n3,4\n")
    assert str(p) in msg and "line 4" in msg and f"byte offset {offset}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("node1,node2\n", "no edges"),
    ("hello\n1,2\n", "line 1"),
    ("1,2\n3,99999999999999999999\n", "line 2"),
    ("1,2\n3,\n", "line 2"),
])
def test_bad_inputs_are_user_errors(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(UserError, match=needle):
        info = graphio.inspect_input(str(p))
        graphio.read_range(info, info.data_start, info.size)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="not found: .*nope.csv"):
        graphio.inspect_input(str(tmp_path / "nope.csv"))


def test_a_filesystem_other_than_local_reads_the_same_ranges(tmp_path, monkeypatch):
    """Local files are parsed from a memory map; any other pyarrow filesystem (HDFS's path) reads
    each range with read_at.  Both give the same edges for every split."""
    p = write(tmp_path, "node1,node2\n" + "".join(f"{i},{(i * 7) % 31}\n" for i in range(200)))
    info = graphio.inspect_input(str(p))
    local = [graphio.read_range(info, lo, hi) for lo, hi in graphio.split_ranges(info, 3)]
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    assert not isinstance(sub, pafs.LocalFileSystem)
    monkeypatch.setattr(graphio, "open_fs", lambda uri: (sub, p.name))
    other = [graphio.read_range(info, lo, hi) for lo, hi in graphio.split_ranges(info, 3)]
    for (a1, b1), (a2, b2) in zip(local, other, strict=True):
        assert a1.tolist() == a2.tolist() and b1.tolist() == b2.tolist()
    assert sum(len(a) for a, _ in other) == 200


def test_file_uri_goes_through_pyarrow_filesystem(tmp_path):
    p = write(tmp_path, "node1,node2\n1,2\n")
    info = graphio.inspect_input(p.as_uri())
    assert graphio.read_range(info, info.data_start, info.size)[1].tolist() == [2]


@pytest.mark.parametrize("uri", ["mock://bucket/g.csv", "ftp://host/g.csv"])
def test_a_scheme_other_than_file_and_hdfs_is_refused_before_any_filesystem(uri):
    """Arrow would open its mock, S3 or GCS filesystem (gs:// waited a minute for Google's servers)."""
    with pytest.raises(UserError, match=f"cannot open {uri}: .* is not supported; give a local path"):
        graphio.open_fs(uri)


# ------------------------------------------------------------------------------------ PageRank
def test_relabel_dense_and_sparse_agree():
    ids = np.array([5, 10**10, 7, 5, 3], dtype=np.int64)
    expect = np.unique(ids, return_inverse=True)[1]
    small = ids[ids < 100]
    mask = graphbuild.presence_mask(small, small, int(small.max()))
    assert np.array_equal(graphbuild.relabel(small, graphbuild.BitRank(mask), True),
                          np.unique(small, return_inverse=True)[1])
    assert np.array_equal(graphbuild.node_ids(mask, True), np.unique(small))
    assert np.array_equal(graphbuild.relabel(ids, np.unique(ids), False), expect)


def test_undirected_arcs_count_a_self_loop_once():
    frm, to = graphbuild.make_arcs(np.array([0, 1]), np.array([1, 1]), directed=False)
    assert sorted(zip(frm.tolist(), to.tolist(), strict=True)) == [(0, 1), (1, 0), (1, 1)]


def test_row_bounds_balance_weight():
    w = np.array([100, 1, 1, 1, 1, 100, 1, 1])
    b = graphbuild.row_bounds(w, 2)
    assert b[0] == 0 and b[-1] == 8 and list(b) == sorted(b)
    assert w[:b[1]].sum() == w[b[1]:].sum() == 103
    assert list(graphbuild.row_bounds(np.ones(3, dtype=int), 5)) == sorted(graphbuild.row_bounds(np.ones(3, dtype=int), 5))


def test_split_and_blocks_reassemble_the_matrix():
    rng = np.random.default_rng(0)
    n = 50
    frm, to = rng.integers(0, n, 400), rng.integers(0, n, 400)
    outdeg = np.bincount(frm, minlength=n)
    inv = np.where(outdeg > 0, 1.0 / np.maximum(outdeg, 1), 0.0)
    bounds = graphbuild.row_bounds(np.bincount(to, minlength=n), 3)
    x = rng.random(n)
    got = []
    for w, piece in enumerate(graphbuild.split_edges(frm, to, bounds, directed=True)):
        t, f = piece.reshape(2, -1)
        lo, hi = int(bounds[w]), int(bounds[w + 1])
        assert t.min() >= 0 and t.max() < hi - lo  # rows in the owner's numbering
        got.append(graphbuild.spmv(graphbuild.csr_pattern(hi - lo, t, f, n), x * inv, np.full(hi - lo, np.nan)))
    full = np.zeros(n)
    np.add.at(full, to, inv[frm] * x[frm])
    assert np.allclose(np.concatenate(got), full)


@pytest.mark.parametrize("chunk", [1 << 20, 9, 1])
@pytest.mark.parametrize("segments", [1, 2, 3, 8])
def test_row_block_in_column_segments_is_the_matrix(monkeypatch, segments, chunk):
    """Hub rows stored once per column segment, short rows once, every pass multiplied in chunks of
    rows (one longer row alone): the same matrix, the same product."""
    rng = np.random.default_rng(segments)
    n, rows = 60, 25
    # int32, as a worker's arcs are: the block must leave the caller's arrays as they were (used below)
    to = np.minimum(rng.geometric(0.15, 700) - 1, rows - 1).astype(np.int32)  # long rows first, as in degree order
    frm = rng.integers(0, n, 700, dtype=np.int32)
    monkeypatch.setattr(graphbuild, "HUB_ARCS", 20)
    monkeypatch.setattr(graphbuild, "SPMV_CHUNK_ARCS", chunk)
    block = graphbuild.csr_pattern(rows, to, frm, n, graphbuild.column_cuts(np.bincount(frm, minlength=n), segments))
    assert (block.hubs > 0 and block.segments == segments) or segments == 1
    assert len(block.ones) <= max(chunk, np.bincount(to).max()) and sum(len(c.columns) for c in block.chunks) == 700
    assert (len(block.chunks) > segments + 1) == (chunk < 700 // (segments + 1))
    dense = np.zeros((rows, n))
    np.add.at(dense, (to, frm), 1.0)
    assert np.array_equal(block.todense(), dense)
    v = rng.random(n)
    assert np.allclose(graphbuild.spmv(block, v, np.full(rows, np.nan)), dense @ v, rtol=1e-14)


_STATUS = """
import json
import numpy as np
from workloads.record import peak_rss, reset_peak_rss

def status(key):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1]) << 10
"""


def resident_peak(script: str) -> dict:
    """Run ``script`` (after :data:`_STATUS`) in a fresh interpreter whose malloc hands every freed array
    back at once (no cached heap blurs the peak); returns the JSON object it prints."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 18), "PYTHONPATH": harness.REPO_ROOT}
    run = subprocess.run([sys.executable, "-c", _STATUS + script], env=env, capture_output=True, text=True,
                         timeout=300, cwd=harness.REPO_ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


_EXCHANGE_AND_BUILD = """
from workloads import graphbuild, pagerank
from workloads.comm import LocalComm

graphbuild.ROUND_EDGES = 1 << 16
graphbuild.KEY_CHUNK_ARCS = graphbuild.SPMV_CHUNK_ARCS = 1 << 16  # their scratch, small beside 414 M arcs
rng = np.random.default_rng(5)
n, edges = 300_000, 4_000_000
src = (n * rng.random(edges) ** 3).astype(np.int32)  # hubs, as in a power-law graph
dst = rng.integers(0, n, edges, dtype=np.int32)
src[:1000] = dst[:1000]  # self-loops: one arc each
counts = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
np.subtract.at(counts, src[src == dst], 1)
rank, outdeg, row_arcs, bounds = graphbuild.plan_rows(counts, False, 1)
frm, to = graphbuild.make_arcs(rank[src], rank[dst], directed=False)
v = rng.random(n)
product = np.bincount(to, weights=v[frm], minlength=n)
arcs, local = len(to), src.nbytes + dst.nbytes
part = pagerank.PageRankPart(0, 1, None, False, 0.85)
part.src, part.dst = src, dst
del src, dst, frm, to, counts
comm = LocalComm()
assert reset_peak_rss()  # VmHWM from here
base = status("VmRSS")
rounds = part.inbox(bounds, row_arcs)
del row_arcs
for _ in range(rounds):
    part.receive(comm.alltoall(part.send_round(rank, bounds)))
nnz = part.build(outdeg)
peak = peak_rss() - base + local
kept = status("VmRSS") - base + local
out = graphbuild.spmv_blocks(part.blocks, v, np.full(n, np.nan))
print(json.dumps({"arcs": arcs, "nnz": nnz, "rounds": rounds, "blocks": len(part.blocks),
                  "peak": peak / arcs, "kept": kept / arcs, "close": bool(np.allclose(out, product, rtol=1e-12))}))
"""


def test_the_exchange_and_the_build_hold_about_one_copy_of_the_arcs():
    """A rank's arcs are the largest arrays of a run (~414 M per rank on `data` over 3 nodes).  It sends its
    edges in rounds, each round's edges leaving its memory as they go; the receiver keeps an arc's
    column and its row within a run of at most 65536 rows (6 B, filled in arrival order into runs made
    to measure from the degrees, 4 kB pages) and builds one row block at a time: the edges, the arcs
    and the build's scratch together peak at 6.9 B per arc here (resident, measured in a fresh process
    whose malloc gives freed arrays back at once; as many rounds per arc as `data` has).  Kept as
    (row, column) pairs in 8 row blocks they peaked at 8.5 B per arc here; exchanged whole and built as
    one block, at 19.5.  The blocks keep ~4 B per arc (their columns; 5.2 with this small graph's
    iteration vectors)."""
    got = resident_peak(_EXCHANGE_AND_BUILD)
    assert got["close"] and got["nnz"] == got["arcs"] and got["rounds"] == 62 and got["blocks"] == graphbuild.BUILD_PARTS
    assert got["peak"] <= 7.5, f"{got['peak']:.1f} B per arc at the peak"
    assert got["kept"] <= 5.5, f"the blocks keep {got['kept']:.1f} B per arc"


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_split_edges_gives_each_owner_the_undirected_arcs_of_its_rows(parts):
    rng = np.random.default_rng(1)
    n = 40
    src, dst = rng.integers(0, n, 300), rng.integers(0, n, 300)
    src[:5] = dst[:5]  # self-loops: one arc each
    frm, to = graphbuild.make_arcs(src, dst, directed=False)
    bounds = graphbuild.row_bounds(np.bincount(to, minlength=n), parts)
    pieces = graphbuild.split_edges(src, dst, bounds, directed=False)
    assert len(pieces) == parts and sum(len(p) for p in pieces) == 2 * len(frm)
    for w, piece in enumerate(pieces):
        lo, hi = int(bounds[w]), int(bounds[w + 1])
        t, f = piece.reshape(2, -1)
        mine = (to >= lo) & (to < hi)
        got = sorted(zip((t + lo).tolist(), f.tolist(), strict=True))
        assert got == sorted(zip(to[mine].tolist(), frm[mine].tolist(), strict=True))


def test_bitmap_relabel_only_where_ids_are_dense_enough():
    assert graphbuild.use_bitmap(10_000_000, 66_000_000)
    assert not graphbuild.use_bitmap(123_000_000, 667_000)  # SNAP's sparse ids on a 10 MB cut
    assert not graphbuild.use_bitmap(graphbuild.DENSE_ID_LIMIT, 10**12)
    a = graphbuild.presence_mask(np.array([3, 9]), np.array([9, 9]), 20)
    b = graphbuild.presence_mask(np.array([0]), np.array([20]), 20)
    assert len(a) == 3  # 21 ids in 3 bytes
    assert graphbuild.node_ids(a | b, True).tolist() == [0, 3, 9, 20]
    index = graphbuild.BitRank(a | b)
    assert index.n == 4 and graphbuild.relabel(np.array([20, 0, 9, 3, 9]), index, True).tolist() == [3, 0, 2, 1, 2]


def test_bit_rank_relabel_equals_a_cumulative_sum_across_words_and_chunks(monkeypatch):
    monkeypatch.setattr(graphbuild.BitRank, "CHUNK", 7)  # several chunks, a partial last one
    rng = np.random.default_rng(2)
    ids = rng.choice(1000, 300, replace=False)
    ids[:2] = [0, 999]  # both ends of the id space, 999 in the last, padded word
    bits = graphbuild.presence_mask(ids, ids, 999)
    mask = np.zeros(1000, np.int64)
    mask[ids] = 1
    expect = np.cumsum(mask) - 1
    index = graphbuild.BitRank(bits)
    assert index.n == 300
    assert np.array_equal(graphbuild.relabel(ids, index, True), expect[ids])
    narrow = ids.astype(np.int32)  # int32 ids (a rank's parsed edges): relabelled in place, chunk by chunk
    got = graphbuild.relabel(narrow, index, True)
    assert got is narrow and np.array_equal(got, expect[ids])
    narrow = ids.astype(np.int32)
    got = graphbuild.relabel(narrow, np.unique(ids), False)
    assert got is narrow and np.array_equal(got, expect[ids])


def test_degree_rank_puts_hubs_first_and_keeps_id_order_on_ties():
    deg = np.array([1, 5, 1, 70_000, 5, 0, 80_000])
    rank = graphbuild.degree_rank(deg)
    assert sorted(rank.tolist()) == list(range(7))
    assert [int(i) for i in np.argsort(rank)] == [3, 6, 1, 4, 0, 2, 5]  # > 65535 ties, then by id
    assert np.array_equal(graphbuild.renumber(deg, rank)[rank], deg)


def test_top_k_orders_ties_by_id():
    ids = np.array([30, 10, 20, 40])
    assert pagerank.top_k(ids, np.array([0.2, 0.3, 0.3, 0.2]), 3) == [[10, 0.3], [20, 0.3], [30, 0.2]]


@pytest.mark.parametrize("directed", [False, True])
def test_reference_matches_networkx(directed):
    rng = np.random.default_rng(5)
    src, dst = rng.integers(0, 60, 300) * 1000, rng.integers(0, 60, 300) * 1000
    ids, x, _, why, change = pagerank.reference_pagerank(src, dst, directed=directed)
    g = (nx.MultiDiGraph if directed else nx.MultiGraph)()
    g.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    ref = nx.pagerank(g, tol=1e-15, max_iter=1000)
    assert why == "tol" and change < pagerank.DEFAULT_TOL
    assert np.abs(x - np.array([ref[i] for i in ids.tolist()])).max() < 1e-12  # networkx stops at n * 1e-15


def test_stopping_rule_is_an_absolute_l1_change_whatever_the_size():
    """networkx's sum|x'-x| < n*tol holds for any change (at most 2) once n > 2/tol: with tol 1e-6 a
    3 M-node graph stops after one step.  Ours compares the change with tol alone: the same steps at
    any size (a change 2 * 0.85^(k-1) at step k reaches 1e-6 at step 91)."""
    for n in (10, 3_000_000):
        ks = iter(range(1000))
        _, iters, why, change = pagerank.power_iterate(lambda x, ks=ks: (x, 2.0 * 0.85 ** next(ks)), n, 1e-6, 1000)
        assert (iters, why) == (91, "tol") and change < 1e-6, n
    assert not pagerank.converged(1e-3, pagerank.DEFAULT_TOL)
    assert pagerank.converged(1e-16, 1e-15) and not pagerank.converged(1e-15, 1e-15)
    assert pagerank.error_bound(1e-15, 0.85) == pytest.approx(0.85 / 0.15 * 1e-15)
    # what the default is for: top scores above 6e-6 (the top 10 up to ~1e8 nodes) within 1e-9 relative
    assert pagerank.error_bound(pagerank.DEFAULT_TOL, 0.85) / 6e-6 < pagerank.TOP_REL_TARGET


@pytest.mark.parametrize("damping", [0.5, 0.85, 0.95])
def test_default_max_iter_allows_the_contraction_to_reach_tol(damping):
    k = pagerank.iterations_for(pagerank.DEFAULT_TOL, damping)
    assert 2 * damping ** (k - 1) < pagerank.DEFAULT_TOL / 1.5  # change_k <= 2 d^(k-1), with margin
    assert k < 1.2 * (np.log(pagerank.DEFAULT_TOL / 2) / np.log(damping) + 1) + 1
    assert pagerank.parse_args(["--input", "g.csv", "--damping", str(damping)]).max_iter == k


@pytest.mark.parametrize("tol", [5e-324, 1e-300, 1e-20])
def test_a_tolerance_below_the_floor_gets_the_steps_to_the_floor(tol):
    """(5e-324 / 2 is 0: its logarithm ended the option parsing in a trace.)"""
    assert pagerank.iterations_for(tol, 0.85) == pagerank.iterations_for(pagerank.FLOOR_TOL, 0.85) > 200


@pytest.mark.parametrize("tol", ["2", "2.5", "10"])
def test_a_tolerance_no_l1_change_can_exceed_is_refused(tol, capsys):
    """An L1 change between probability vectors is at most 2: --tol 2.5 made the default --max-iter 0
    (an ok record of the start vector), --tol 3 made it -1 (a failed record after the whole run)."""
    with pytest.raises(SystemExit) as exc:
        pagerank.parse_args(["--input", "g.csv", "--tol", tol])
    assert exc.value.code == 2 and f"--tol must be below 2, not {tol}" in capsys.readouterr().err
    assert pagerank.parse_args(["--input", "g.csv", "--tol", "1.99"]).max_iter >= 1


def test_fixed_iterations_need_max_iter():
    with pytest.raises(SystemExit):
        pagerank.parse_args(["--input", "g.csv", "--tol", "0"])
    args = pagerank.parse_args(["--input", "g.csv", "--tol", "0", "--max-iter", "20"])
    assert (args.tol, args.max_iter) == (0.0, 20)


def random_matrix(seed: int = 9, n: int = 300, m: int = 900):
    rng = np.random.default_rng(seed)
    return pagerank.reference_matrix(rng.integers(0, n, m), rng.integers(0, n, m), directed=True)


def test_error_bound_holds_at_every_step_and_the_floor_is_far_below_the_default_tol():
    _, mat, dangling = random_matrix()
    assert dangling.any()
    truth, _, why, floor = pagerank.reference_iterate(mat, dangling, damping=0.85, tol=1e-17, max_iter=1000)
    assert why in ("tol", "floor") and floor < pagerank.DEFAULT_TOL / 10
    for steps in (1, 5, 20, 60, 120):
        x, it, why, change = pagerank.reference_iterate(mat, dangling, damping=0.85, tol=0.0, max_iter=steps)
        assert (it, why) == (steps, "max_iter")
        assert np.abs(x - truth).sum() <= pagerank.error_bound(change, 0.85) + 1e-15


def test_power_iterate_says_whether_it_converged():
    _, mat, dangling = random_matrix()

    def step(x):
        new = 0.85 * (mat @ x) + (0.85 * x[dangling].sum() + 0.15) / len(x)
        return new, float(np.abs(new - x).sum())

    n = mat.shape[0]
    x, it, why, change = pagerank.power_iterate(step, n, pagerank.DEFAULT_TOL, 1000)
    assert why == "tol" and change < pagerank.DEFAULT_TOL
    assert it < pagerank.iterations_for(pagerank.DEFAULT_TOL, 0.85)
    x, it, why, change = pagerank.power_iterate(step, n, 0.0, 20)
    assert (it, why) == (20, "max_iter") and change > 0
    m = pagerank.convergence_metrics(pagerank.top_k(np.arange(n), x, 3), it, why, change, 0.85)
    assert m["converged"] is False and m["stopped_by"] == "max_iter" and m["iterations"] == 20
    assert m["error_bound"] == pytest.approx(0.85 / 0.15 * change) and m["top_error_bound"] > m["error_bound"]


def test_the_spmv_time_covers_a_ranks_own_step_and_not_the_gather(monkeypatch):
    """``spmv_s_per_iter`` is a rank's own rows' work: the driver's timer is open around the step and
    closed before the collective that waits for the other ranks."""
    from contextlib import contextmanager

    events = []

    @contextmanager
    def timer(timings, key, peaks=None):
        events.append(f"open {key}")
        yield
        events.append(f"close {key}")
        timings[key] = timings.get(key, 0.0) + 1.0

    class Part:
        def step(self, x):
            events.append("step")
            return x[:2], 0.0

    class Comm:
        def block_gatherer(self, counts, dtype):
            def gather(mine, change):
                events.append("gather")
                return np.full(4, 0.25), change
            return gather

    monkeypatch.setattr(pagerank, "timer", timer)
    args = pagerank.parse_args(["--input", "g.csv", "--tol", "0", "--max-iter", "3"])
    spent: dict[str, float] = {}
    x, it, why, _ = pagerank.iterate(Part(), Comm(), np.array([0, 2, 4]), 4, args, None, spent)
    assert (it, why) == (3, "max_iter") and spent == {"spmv": 3.0}
    assert events == ["open spmv", "step", "close spmv", "gather"] * 3


def test_stop_rule_stops_at_the_rounding_floor_only_below_its_ceiling():
    """Rounding can hold the change above tol (a star's hub sums many terms): the run stops once the
    change has not fallen for FLOOR_STEPS steps, if it is that small; never with --tol 0."""
    floor = pagerank.StopRule(1e-15)
    assert [floor(c) for c in (1e-3, 1e-9, 2e-15, 3e-15, 2e-15, 2.5e-15, 2e-15)] == [None] * 7
    assert floor(2.1e-15) == "floor"
    high = pagerank.StopRule(1e-15)
    assert all(high(1e-9) is None for _ in range(50))
    stuck = pagerank.StopRule(1e-15)  # a floor above the ceiling is not rounding: --max-iter ends it
    assert all(stuck(5e-13) is None for _ in range(50))
    assert pagerank.StopRule(1e-15)(1e-16) == "tol"
    assert all(pagerank.StopRule(0.0)(0.0) is None for _ in range(3))


def test_reference_does_not_use_the_kernel_relabelling(monkeypatch, tmp_path):
    """The verifier builds its matrix from the edge list with np.unique and scipy alone, and iterates
    it with none of the kernel's code: its verdict on a vector made here by a dense power iteration."""
    for name in ("BitRank", "presence_mask", "relabel", "node_ids", "make_arcs", "csr_pattern", "split_edges",
                 "distribute"):
        monkeypatch.setattr(graphbuild, name, None)
    for name in ("node_ids", "GraphPart", "RowBlock", "spmv_blocks", "PageRankPart", "pagerank_step",
                 "power_iterate"):  # the builder's names pagerank uses, and the kernel's own
        monkeypatch.setattr(pagerank, name, None)
    src, dst = np.array([5, 9, 9, 7]), np.array([9, 7, 7, 7])
    ids, mat, dangling = pagerank.reference_matrix(src, dst, directed=False)
    assert ids.tolist() == [5, 7, 9] and not dangling.any()
    assert np.allclose(mat.sum(axis=0), 1.0)  # column-stochastic; 7's self-loop counted once
    assert mat[1, 1] == pytest.approx(1 / 3) and mat[1, 2] == pytest.approx(2 / 3)

    # 12 fixed steps of directed PageRank: 5 -> 9, 9 -> 7 twice, a self-loop on 7, 4 -> 5, and 9 -> 8
    # (8 is dangling)
    inp = write(tmp_path, "node1,node2\n5,9\n9,7\n9,7\n7,7\n4,5\n9,8\n")
    a = np.zeros((5, 5))  # ids 4 5 7 8 9; a[v, u]: arcs u -> v
    for u, v in [(1, 4), (4, 2), (4, 2), (2, 2), (0, 1), (4, 3)]:
        a[v, u] += 1
    out = a.sum(axis=0)
    x = np.full(5, 0.2)
    for _ in range(12):
        x = 0.85 * (a / np.where(out, out, 1)) @ x + (0.85 * x[out == 0].sum() + 0.15) / 5
    args = pagerank.parse_args(["--input", str(inp), "--directed", "--tol", "0", "--max-iter", "12"])
    info = graphio.inspect_input(str(inp))
    ids = np.array([4, 5, 7, 8, 9])
    v = pagerank.verify(args, info, ids, x, 12, "max_iter", 0.0, 0.0)
    assert v["passed"] and v["mode"] == "same-iterations" and v["l1_error"] <= 1e-15, v
    x[0] += 1e-9
    assert pagerank.verify(args, info, ids, x, 12, "max_iter", 0.0, 0.0)["passed"] is False


def test_seed_batch_is_torch_ppr_with_its_defaults_and_batches_are_summed_per_node():
    edges = np.array([(10, 20), (20, 30), (30, 10), (30, 40), (50, 60)])
    ids, scores = pagerank_seed.batch(edges[:, 0], edges[:, 1])
    g = nx.Graph()
    g.add_edges_from(edges.tolist())
    ref = nx.pagerank(g, alpha=0.95, tol=1e-12)
    assert ids.tolist() == [10, 20, 30, 40, 50, 60] and scores.sum() == pytest.approx(1.0, abs=1e-6)
    assert max(abs(s - ref[i]) for i, s in zip(ids.tolist(), scores, strict=True)) < 1e-3  # float32, eps 1e-4
    args = pagerank.parse_args(["--input", "g.csv", "--method", "seed", "--top", "2", "--damping", "0.95"])
    batches = [(1, np.array([20, 30]), np.array([0.5, 0.5])), (0, np.array([10, 20]), np.array([0.25, 0.75]))]
    x = np.array([0.2, 0.5, 0.3])
    m = pagerank_seed.metrics(args, np.array([10, 20, 30]), x, [[20, 0.5], [30, 0.3]], batches)
    assert m["batches"] == 2 and m["top"] == [[20, 1.25 / 2], [30, 0.5 / 2]]  # summed, then normalised
    assert m["top_overlap"] == 1.0 and m["l1_error"] == pytest.approx(0.075 + 0.125 + 0.05)


# -------------------------------------------------------------------------------------- k-means
def test_exact_sums_are_exact_beyond_float_precision():
    v = np.full(1000, 2.0**50)
    v[::2] += 1
    labels = np.zeros(1000, dtype=np.int32)
    assert pointgrid.exact_sums(labels, v, 1)[0] == 1000 * 2**50 + 500


def test_ch_equals_sklearn():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 10**8, 3000).astype(float), rng.integers(0, 10**8, 3000).astype(float)
    labels = rng.integers(0, 7, 3000).astype(np.int32)
    stats = pointgrid.cluster_stats(labels, x, y, 7)
    ours = kmeans.calinski_harabasz(stats, pointgrid.within_sse(labels, x, y, kmeans.means(stats, np.zeros((7, 2)))))
    theirs = calinski_harabasz_score(np.stack([x, y], 1), labels)
    assert ours == pytest.approx(theirs, rel=1e-10)


def test_ch_of_one_distinct_point_says_so():
    """All points the same: one cluster whatever --k; the advice used to be a --k below 1."""
    stats = pointgrid.cluster_stats(np.zeros(5, dtype=np.int32), np.full(5, 7.0), np.full(5, 7.0), 3)
    with pytest.raises(UserError, match="all 5 points are the same point"):
        kmeans.calinski_harabasz(stats, np.zeros(3))


def test_assign_picks_the_nearest_centre():
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 10**7, 20000).astype(float), rng.integers(0, 10**7, 20000).astype(float)
    c = rng.uniform(0, 10**7, (9, 2))
    brute = ((x[:, None] - c[:, 0]) ** 2 + (y[:, None] - c[:, 1]) ** 2).argmin(axis=1)
    assert (pointgrid.assign(x, y, c) == brute).all()


@pytest.mark.parametrize("case", ["random", "integer_centres_with_ties", "lattice"])
def test_grid_lloyd_gives_exact_nearest_labels_and_stats(case):
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 10**6, 50_000).astype(float), rng.integers(0, 10**6, 50_000).astype(float)
    c = rng.uniform(0, 10**6, (16, 2))
    if case == "integer_centres_with_ties":  # many points exactly on a bisector
        c = np.round(c / 2) * 2
    elif case == "lattice":
        x, y, c = np.round(x, -3), np.round(y, -3), np.round(c, -3) + 500
    grid = pointgrid.PointGrid(x, y)
    assert grid.g > 1 and (grid.sure_owner(c) >= 0).any() and (grid.sure_owner(c) < 0).any()
    x, y = grid.x, grid.y  # the grid's order (by cell)
    brute = ((x[:, None] - c[:, 0]) ** 2 + (y[:, None] - c[:, 1]) ** 2).argmin(axis=1).astype(np.int32)
    stats, changed = grid.lloyd(c)
    assert changed == len(x)
    assert np.array_equal(grid.all_labels(), brute)
    assert np.array_equal(stats, pointgrid.cluster_stats(brute, x, y, 16))


def test_grid_keeps_the_points_and_counts_changed_labels_exactly():
    rng = np.random.default_rng(7)
    x, y = rng.integers(0, 10**6, 40_000), rng.integers(0, 10**6, 40_000)  # as parsed: integer ids
    grid = pointgrid.PointGrid(x, y)
    assert sorted(zip(grid.x.tolist(), grid.y.tolist(), strict=True)) == sorted(
        zip(x.astype(float).tolist(), y.astype(float).tolist(), strict=True))
    c = rng.uniform(0, 10**6, (12, 2))
    before = None
    for _ in range(6):  # centres moved at random: owners change, cells go from sure to straddling and back
        _, changed = grid.lloyd(c)
        labels = grid.all_labels()
        assert changed == (len(labels) if before is None else int(np.count_nonzero(labels != before)))
        before = labels
        c = c + rng.normal(0, 3e4, c.shape)


def test_the_grid_keeps_ids_that_int32_cannot_hold():
    """The grid keeps the ids as parsed when int32 holds them, else as int64: a uint32 above 2**31 must not wrap."""
    rng = np.random.default_rng(11)
    x = rng.integers(2**31, 2**32 - 1, 5000).astype(np.uint32)
    y = rng.integers(0, 2**32 - 1, 5000).astype(np.uint32)
    grid = pointgrid.PointGrid(x, y)
    assert grid.x.dtype == np.int64
    assert sorted(zip(grid.x.tolist(), grid.y.tolist(), strict=True)) == sorted(zip(x.tolist(), y.tolist(), strict=True))
    assert grid.cell_stats[1].sum() == int(x.astype(np.int64).sum())


def test_grid_labels_do_not_depend_on_how_points_are_split():
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 10**8, 30_000).astype(float), rng.integers(0, 10**8, 30_000).astype(float)
    c = rng.uniform(0, 10**8, (9, 2))
    def labelled(grid: pointgrid.PointGrid) -> tuple[dict[tuple[float, float], int], np.ndarray]:
        stats = grid.lloyd(c)[0]
        return dict(zip(zip(grid.x.tolist(), grid.y.tolist(), strict=True), grid.all_labels().tolist(), strict=True)), stats

    whole, stats = labelled(pointgrid.PointGrid(x, y))
    parts = [labelled(pointgrid.PointGrid(x[a:b], y[a:b], g)) for (a, b), g in [((0, 7_000), 8), ((7_000, 30_000), 32)]]
    assert {**parts[0][0], **parts[1][0]} == whole
    assert np.array_equal(parts[0][1] + parts[1][1], stats)


_GRID_BUILD = """
import scipy.sparse  # (the grid's sort imports it: its pages are not the grid's)
from workloads import kmeans, pointgrid

rng = np.random.default_rng(9)
n = 4_000_000
x = rng.integers(0, 125_000_000, n, dtype=np.int32)  # as parsed: int32 ids
y = rng.integers(0, 125_000_000, n, dtype=np.int32)
part = kmeans.KMeansPart(0, 1, None)
part.x, part.y = x, y
part.add_center(np.array([1e6, 2e6]))  # the k-means++ state: D^2, 8 B a point
want = pointgrid.cluster_stats(np.zeros(n, np.int32), x, y, 1)
del x, y
assert reset_peak_rss()  # VmHWM from here
base, held = status("VmRSS"), 16 * n  # the ids and D^2
part.index()
peak, kept = peak_rss() - base + held, status("VmRSS") - base + held
stats = part.grid.cell_stats.sum(axis=1)
print(json.dumps({"peak": peak / n, "kept": kept / n, "dtype": str(part.grid.x.dtype),
                  "same": bool(np.array_equal(stats, want[:, 0]))}))
"""


def test_the_grid_keeps_the_parsed_ids_and_its_sort_holds_about_17_bytes_a_point():
    """k-means keeps a rank's points (~207 M per rank on `data` over 3 nodes) in the grid as the int32
    ids they were parsed as, drops the k-means++ D^2 before the sort, and sorts each coordinate as the
    column of a counting sort by cell, freeing it once its sorted copy exists: the build peaks at
    17.2 B a point here (the ids, the cell, one sorted copy, the scratch byte), the grid keeps ~9 (the
    ids; labels are written only where cells straddle).  Built as float64 points beside the ids, D^2 and
    an index array it peaked at 44 B a point (data_1 on 2 ranks: 1.49-1.54 GiB per rank against
    0.84-0.92 GiB with the first half of this change)."""
    got = resident_peak(_GRID_BUILD)
    assert got["same"] and got["dtype"] == "int32"
    assert got["peak"] <= 19.0, f"{got['peak']:.1f} B a point at the peak"
    assert got["kept"] <= 10.0, f"the grid keeps {got['kept']:.1f} B a point"


def test_lloyd_loop_reports_whether_labels_settled():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 10**6, 5000).astype(float), rng.integers(0, 10**6, 5000).astype(float)
    part = kmeans.KMeansPart(0, 1, None)
    part.x, part.y = x, y
    init = np.stack([x[:5], y[:5]], axis=1)
    _, centers, iters, done = kmeans.lloyd_loop(init, 500, part.lloyd)
    assert done and 1 < iters < 500
    assert np.array_equal(kmeans.means(part.grid.lloyd(centers)[0], centers), centers)  # an exact fixed point
    part = kmeans.KMeansPart(0, 1, None)
    part.x, part.y = x, y
    _, _, iters, done = kmeans.lloyd_loop(init, 2, part.lloyd)
    assert (iters, done) == (2, False)


def test_owner_of_walks_worker_masses():
    assert kmeans.owner_of([1.0, 2.0, 3.0], 2.5) == (1, 1.5)
    assert kmeans.owner_of([1.0, 0.0, 3.0], 5.9)[0] == 2


# ----------------------------------------------------------------------------------------- data
def test_degree_sequence_is_exact_and_heavy_tailed():
    d = data.degree_sequence(10_000, 60_000, np.random.default_rng(0))
    assert d.sum() == 120_000 and d.min() >= 1 and d.max() > 10 * d.mean()


def test_sparse_ids_are_increasing_and_span_the_range():
    ids = data.sparse_ids(1000, 100_000, np.random.default_rng(0))
    assert (np.diff(ids) > 0).all() and 80_000 < ids[-1] < 120_000


def test_tiny_synthetic_graph_has_the_spec_counts(tmp_path):
    p = data.generate("tiny", tmp_path, seed=1)
    lines = p.read_text().splitlines()
    assert lines[0] == "node1,node2"
    e = np.array([list(map(int, ln.split(","))) for ln in lines[1:]])
    spec = data.DATASETS["tiny"]
    assert len(e) == spec.edges and len(np.unique(e)) == spec.nodes
    assert (e[:, 0] < e[:, 1]).all() and (np.diff(e[:, 0]) >= 0).all()
    assert data.generate("tiny", tmp_path / "again", seed=1).read_bytes() == p.read_bytes()


def test_snap_cut_is_a_prefix_with_header(tmp_path, monkeypatch):
    body = "".join(f"{i}\t{i + j + 1}\n" for i in range(1, 400) for j in range(3))
    src = tmp_path / "com-friendster.ungraph.txt.gz"
    with gzip.open(src, "wt") as f:
        f.write("# Undirected graph\n# Nodes: 1 Edges: 1\n# FromNodeId\tToNodeId\n" + body)
    monkeypatch.setitem(data.DATASETS, "tiny", data.Spec("tiny", None, 100, 0, 0))
    monkeypatch.setitem(data.DATASETS, "test_data", data.Spec("test_data", 1000, 0, 0, 0))
    tiny = data.generate("tiny", tmp_path, from_snap=src).read_text()
    assert tiny == "node1,node2\n" + "".join(body.splitlines(keepends=True)[:100]).replace("\t", ",")
    cut = data.generate("test_data", tmp_path, from_snap=src).read_text()
    assert body.replace("\t", ",").startswith(cut[len("node1,node2\n"):])
    assert 1000 - 12 <= len(cut) - len("node1,node2\n") <= 1000 and cut.endswith("\n")


def test_synthetic_graph_of_any_size(tmp_path):
    p = data.synthetic(tmp_path / "g.csv", 500, 1500, seed=2)
    e = np.loadtxt(p, delimiter=",", skiprows=1, dtype=np.int64)
    assert len(e) == 1500 and len(np.unique(e)) == 500 and e.max() <= 1000
    assert not list(tmp_path.glob(".*"))  # no part or bucket files left


def test_unknown_dataset_and_missing_snap_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        data.generate("huge", tmp_path)
    with pytest.raises(UserError, match="not found"):
        data.generate("tiny", tmp_path, from_snap=tmp_path / "none.txt")


def test_a_snap_file_that_is_no_edge_list_or_no_gzip_is_one_line_and_leaves_nothing(tmp_path):
    """Any text became a dataset (``hello,world`` as an edge); a .gz that was not gzip, a trace."""
    (tmp_path / "src").mkdir()
    junk = tmp_path / "src" / "junk.txt"
    junk.write_text("hello world\nnot an edge\n")
    fake = tmp_path / "src" / "com-friendster.ungraph.txt.gz"
    fake.write_text("1\t2\n")
    with pytest.raises(UserError, match=r"junk.txt: its first edge line is b'hello,world', not two node ids"):
        data.generate("tiny", tmp_path / "out", from_snap=junk)
    with pytest.raises(UserError, match=r"ungraph.txt.gz is not a whole gzip file \(Not a gzipped file"):
        data.generate("tiny", tmp_path / "out", from_snap=fake)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("case", ["a_file", "under_a_file"])
def test_an_out_directory_that_cannot_be_made_is_one_line(tmp_path, case):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if case == "a_file" else tmp_path / "f" / "sub"
    why = "it is a file" if case == "a_file" else "not a directory"
    with pytest.raises(UserError, match=f"cannot write tiny to {out}: {why}; give --out a directory you can"):
        data.generate("tiny", out)


# ------------------------------------------------------------------------- inputs at the edges
@pytest.mark.parametrize("first", ["1,2.5", "1.5,2", "node1,2", "-1,1e3"])
def test_a_numeric_first_line_is_not_a_header(tmp_path, first):
    p = write(tmp_path, f"{first}\n2,3\n")
    with pytest.raises(UserError, match=r"line 1 \(byte offset 0\)"):
        graphio.inspect_input(str(p))


@pytest.mark.parametrize("header", ["node1,node2", "src , dst", "from,to\r"])
def test_a_line_with_no_number_is_a_header(tmp_path, header):
    p = write(tmp_path, f"{header}\n2,3\n")
    info = graphio.inspect_input(str(p))
    assert graphio.read_range(info, info.data_start, info.size)[0].tolist() == [2]


@pytest.mark.parametrize("header", ["", "node1,node2\n"])
def test_a_byte_order_mark_is_not_data(tmp_path, header):
    """A spreadsheet's CSV starts with a UTF-8 byte-order mark: with no header, its first edge was
    refused as a bad header."""
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + f"{header}1,2\n3,4\n".encode())
    info = graphio.inspect_input(str(p))
    assert info.data_start == 3 + len(header)
    for parts in (1, 2):
        got = [graphio.read_range(info, lo, hi) for lo, hi in graphio.split_ranges(info, parts)]
        assert np.concatenate([g[0] for g in got]).tolist() == [1, 3]


def test_int64_min_is_a_valid_id_and_a_later_bad_line_is_named(tmp_path):
    p = write(tmp_path, "-9223372036854775808,9223372036854775807\n2,x\n")
    info = graphio.inspect_input(str(p))
    with pytest.raises(UserError, match=r"line 2 \(byte offset 41\)"):
        graphio.read_range(info, info.data_start, info.size)
    assert graphio.first_bad_line(b"-9223372036854775808,1\n") is None
    assert graphio.first_bad_line(b"-9223372036854775809,1\n") == 0


@pytest.mark.parametrize("bad", [np.iinfo(np.int64).min, -2**53, 2**53])
def test_kmeans_rejects_every_id_outside_the_exact_range(bad):
    a = np.array([1, bad], dtype=np.int64)
    with pytest.raises(UserError, match="2\\*\\*53"):
        pointgrid.as_points(a, np.array([1, 2], dtype=np.int64))
    with pytest.raises(UserError, match="2\\*\\*53"):
        pointgrid.as_points(np.array([1, 2], dtype=np.int64), a)
    ok = np.array([-(2**53) + 1, 2**53 - 1], dtype=np.int64)
    assert pointgrid.as_points(ok, ok)[0].tolist() == [float(-(2**53) + 1), float(2**53 - 1)]
    with pytest.raises(UserError, match="2\\*\\*53"):
        pointgrid.id_extent(a, a)  # what a rank's load checks, and returns for the int64 sums' bound
    assert pointgrid.id_extent(ok, ok[::-1] // 2) == 2**53 - 1 and pointgrid.id_extent(ok[:0], ok[:0]) == 0


@pytest.mark.parametrize("parts", [1, 2, 3, 16])
def test_row_bounds_cut_a_slice_at_a_time_where_one_running_sum_cuts(monkeypatch, parts):
    """The cuts made from running sums a slice at a time (no n-long sum: 332 MB on `data`) are those of one
    running sum over every row, with the cost of a row applied a slice at a time too."""
    def whole(weight: np.ndarray, parts: int) -> np.ndarray:
        cum = np.cumsum(weight, dtype=np.float64)
        total = cum[-1] if len(weight) else 0.0
        cuts = np.searchsorted(cum, total * np.arange(1, parts) / parts, side="left") + 1
        return np.maximum.accumulate(np.concatenate([[0], np.minimum(cuts, len(weight)), [len(weight)]]))

    monkeypatch.setattr(graphbuild, "WEIGHT_CHUNK", 7)
    rng = np.random.default_rng(parts)
    arcs = (200 * rng.random(500) ** 4).astype(np.int32)  # hubs first would not matter: any order
    arcs[100:140] = 0  # empty rows: cuts may fall among them
    assert graphbuild.row_bounds(arcs, parts).tolist() == whole(arcs, parts).tolist()
    assert graphbuild.row_bounds(arcs, parts, graphbuild.row_cost).tolist() == whole(graphbuild.row_cost(arcs), parts).tolist()
    assert graphbuild.row_bounds(np.zeros(0, np.int32), parts).tolist() == [0] * (parts + 1)


def test_degree_rank_a_slice_at_a_time_is_the_stable_sort_of_every_node(monkeypatch):
    """The counting sort made a slice of nodes at a time (its int64 order and scratch for every node held
    0.92 GiB at `data`'s 41.5 M nodes; 0.31 now) numbers nodes as one stable sort by degree would:
    highest first, ties (and degrees above 65535) in id order."""
    monkeypatch.setattr(graphbuild, "DEGREE_CHUNK", 7)
    rng = np.random.default_rng(4)
    degree = (rng.pareto(1.2, 1000) * 5).astype(np.int32)
    degree[[3, 500, 999]] = [70_000, 65_535, 90_000]  # tie at the top of the 16-bit key
    key = np.iinfo(np.uint16).max - np.minimum(degree, np.iinfo(np.uint16).max)
    want = np.empty(len(degree), dtype=np.int64)
    want[np.argsort(key, kind="stable")] = np.arange(len(degree))
    got = graphbuild.degree_rank(degree)
    assert got.dtype == np.int32 and got.tolist() == want.tolist()
    assert graphbuild.degree_rank(np.zeros(0, np.int32)).tolist() == []


_COUNT = """
from workloads import graphbuild

rng = np.random.default_rng(8)
n = 2_000_000
ids = rng.integers(0, n, 8_000_000).astype(np.int32)
out = np.zeros(n, np.int32)
out[:] = 0
assert reset_peak_rss()  # VmHWM from here
base = status("VmRSS")
graphbuild.count_ids(ids, out)
print(json.dumps({"above": peak_rss() - base, "same": bool(np.array_equal(out, np.bincount(ids, minlength=n)))}))
"""


def test_ids_are_counted_in_place(monkeypatch):
    """Degrees are counted into the run's count type with nothing beside the ids and the counts
    (bincount's int64 copy of a rank's ends was 1.66 GB on `data`, its n-long int64 result 0.3 GB);
    self-loops once."""
    monkeypatch.setattr(graphbuild, "COUNT_CHUNK", 7)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 50, 300).astype(np.int32)
    for dtype in (np.int32, np.int64):
        out = np.arange(60, dtype=dtype)
        got = graphbuild.count_ids(ids, out)
        assert got is out and got.tolist() == (np.bincount(ids, minlength=60) + np.arange(60)).tolist()
    got = resident_peak(_COUNT)  # bincount: 64 MB of int64 ids and a 16 MB result above these arrays
    assert got["same"] and got["above"] < 4 << 20, f"{got['above'] >> 20} MB above the ids and the counts"
    part = pagerank.PageRankPart(0, 1, None, False, 0.85)
    src, dst = rng.integers(0, 40, 200).astype(np.int32), rng.integers(0, 40, 200).astype(np.int32)
    src[:9] = dst[:9]  # self-loops: one arc each
    part.src, part.dst = src.copy(), dst.copy()
    mask = graphbuild.presence_mask(src, dst, 39)
    degree = part.degrees(mask, np.int32)
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    s, d = inv[:200], inv[200:]
    want = np.bincount(s, minlength=len(ids)) + np.bincount(d[s != d], minlength=len(ids))
    assert degree.dtype == np.int32 and degree.tolist() == want.tolist()
