"""PageRank and k-means run for real on Ray and torch.distributed (1-3 local workers) against references.

One local Ray cluster (3 CPUs, 127.0.0.1) serves the whole module; the drivers reuse it.  torch runs
spawn their own gloo ranks.  Graphs are tiny: this checks semantics, not speed (that is bench/).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow.csv as pacsv
import pytest
import scipy.sparse as sp
from sklearn.metrics import calinski_harabasz_score

from workloads import data, graphio, harness, kmeans, pagerank, pagerank_seed, pointgrid, procs
from workloads.harness import raylaunch

REPO = Path(__file__).resolve().parents[2]
RUNS = [("ray", 1), ("ray", 2), ("ray", 3), ("torch", 1), ("torch", 2), ("torch", 3)]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    os.environ["SCALELAB_NO_PROGRESS"] = "1"
    if not ray.is_initialized():
        raylaunch.start_local_ray(3)
    yield
    raylaunch.stop_ray()


def test_local_ray_is_on_loopback_with_a_token_and_workers_at_nice_0():
    """A local Ray is private: its address is 127.0.0.1, a client without its token is refused, and
    its workers run at the priority torch's ranks run at.  Its raylet retries a connection after 0.1 s
    (its object store's socket, where that store is not listening yet), not Ray's 1 s."""
    import ray
    from ray._private import ray_constants, worker

    raylet = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    environ = Path(f"/proc/{raylet}/environ").read_bytes().split(b"\0")
    assert b"RAY_raylet_client_connect_timeout_milliseconds=100" in environ, "the raylet waits 1 s per retry"

    addr = ray.get_runtime_context().gcs_address
    assert addr.startswith("127.0.0.1:"), addr
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={addr!r})"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "AuthenticationError" in proc.stderr, proc.stderr[-2000:]
    assert ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()) == 0


def write_edges(path: Path, edges: list[tuple[int, int]] | np.ndarray, header: bool = True) -> Path:
    with open(path, "w") as f:
        if header:
            f.write("node1,node2\n")
        f.writelines(f"{a},{b}\n" for a, b in edges)
    return path


def run(module, tmp_path: Path, framework: str, workers: int, inp: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / f"{framework}{workers}.json"
    rc = module.main(["--framework", framework, "--workers", str(workers), "--input", str(inp),
                      "--output", str(out), *extra])
    return rc, json.loads(out.read_text())


def assert_rank_peaks(peaks: dict[str, list[float]], workers: int, phases: list[str]) -> None:
    """The record's ``peak_rss_gib``: the phases in order, then rank 0's "results", one peak per rank,
    each a process's size (an interpreter with numpy: 0.05-8 GiB)."""
    assert list(peaks) == [*phases, "results"]
    assert all(len(peaks[p]) == workers for p in phases) and len(peaks["results"]) == 1
    assert all(0.05 < gib < 8 for p in peaks for gib in peaks[p]), peaks


# ----------------------------------------------------------------------------------- graphs
def mixed_shapes() -> list[tuple[int, int]]:
    """Several shapes as components of one graph: a 30-leaf star, a triangle, a path, a 2-clique,
    a self-loop and a repeated edge (parallel edges count, as in a networkx MultiGraph)."""
    star = [(500, 500 + i) for i in range(1, 31)]
    return star + [(1, 2), (2, 3), (3, 1), (10, 11), (11, 12), (12, 13), (20, 21), (30, 30), (30, 31), (1, 2)]


def sparse_big_ids() -> np.ndarray:
    """Random graph whose ids exceed int32 and the bitmap limit (5e9 .. 2**40): the sorted-union path."""
    rng = np.random.default_rng(7)
    ids = np.sort(rng.choice(2**40, 120, replace=False)) + 5_000_000_000
    return ids[rng.integers(0, 120, (500, 2))]


def nx_pagerank(edges, directed: bool = False, **kw) -> dict[int, float]:
    g = nx.MultiDiGraph() if directed else nx.MultiGraph()
    g.add_edges_from((int(a), int(b)) for a, b in edges)
    return nx.pagerank(g, **kw)


def check_against_networkx(tmp_path: Path, edges, framework: str, workers: int, capfd) -> dict:
    """Default flags (converged), every node reported, against networkx run far past its default; the
    summary line (a torch rank 0 prints it from its own process) does not say NOT CONVERGED."""
    inp = write_edges(tmp_path / "g.csv", edges)
    capfd.readouterr()
    rc, rec = run(pagerank, tmp_path, framework, workers, inp, "--top", "1000", "--verify")
    assert rc == 0 and rec["status"] == "ok", rec["error"]
    out = capfd.readouterr().out
    assert f"pagerank {framework} workers={workers}" in out and "NOT CONVERGED" not in out, out
    ref = nx_pagerank(edges, tol=1e-15, max_iter=1000)
    got = {node: score for node, score in rec["metrics"]["top"]}
    assert set(got) == set(ref)  # exact int64 ids, no rounding
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-12
    m, v = rec["metrics"], rec["verification"]
    assert m["converged"] is True and m["stopped_by"] in ("tol", "floor") and m["l1_change"] < 1e-13
    assert m["error_bound"] < 1e-13 and m["top_error_bound"] < 1e-9
    assert v["passed"] and v["mode"] == "converged" and v["error"] <= v["accuracy"] <= 1e-9
    scores = [s for _, s in rec["metrics"]["top"]]
    assert scores == sorted(scores, reverse=True)
    assert rec["framework"] == framework and rec["workers"] == workers
    return rec


# -------------------------------------------------------------------------------- PageRank
@pytest.mark.parametrize("framework, workers", RUNS)
def test_pagerank_matches_networkx_on_mixed_shapes(tmp_path, framework, workers, capfd):
    check_against_networkx(tmp_path, mixed_shapes(), framework, workers, capfd)


@pytest.mark.parametrize("framework, workers", [("ray", 2), ("torch", 3)])
def test_pagerank_matches_networkx_with_ids_beyond_int32(tmp_path, framework, workers, capfd):
    rec = check_against_networkx(tmp_path, sparse_big_ids(), framework, workers, capfd)
    assert min(node for node, _ in rec["metrics"]["top"]) > 2**32


@pytest.mark.parametrize("framework", ["ray", "torch"])
def test_pagerank_directed_with_dangling_nodes_and_seed_damping(tmp_path, framework):
    edges = [(1, 2), (2, 3), (3, 1), (3, 4), (4, 5), (6, 5), (7, 7)]  # 5 is dangling
    inp = write_edges(tmp_path / "d.csv", edges)
    rc, rec = run(pagerank, tmp_path, framework, 3, inp, "--directed", "--damping", "0.95", "--tol", "1e-12",
                  "--max-iter", "1000", "--top", "10")
    ref = nx_pagerank(edges, directed=True, alpha=0.95, tol=1e-12, max_iter=1000)
    assert rc == 0
    assert max(abs(s - ref[n]) for n, s in rec["metrics"]["top"]) < 1e-10


def random_graph(seed: int = 3, nodes: int = 400, edges: int = 1600) -> np.ndarray:
    """A random multigraph with sparse ids, self-loops and some isolated pairs."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10**9, nodes, replace=False))
    e = ids[rng.integers(0, nodes, (edges, 2))]
    return np.concatenate([e, ids[:6].reshape(3, 2)])


def test_pagerank_fixed_iterations_agree_everywhere_and_say_not_converged(tmp_path, capfd):
    """--tol 0 --max-iter 20 (benchmarks, the seed comparison): both runtimes and 1-3 workers give
    the reference's 20-step vector to 1e-12, verified at the same count, and never claim convergence
    (the record, and the summary line of each run: a torch rank 0 prints it from its own process)."""
    inp = write_edges(tmp_path / "r.csv", random_graph())
    fixed = ("--tol", "0", "--max-iter", "20", "--top", "1000")
    rc, base = run(pagerank, tmp_path, "reference", 1, inp, *fixed)
    assert rc == 0 and "NOT CONVERGED" in capfd.readouterr().out
    fixed += ("--verify",)
    assert_rank_peaks(base["metrics"]["peak_rss_gib"], 1, ["load", "build", "compute"])
    want = dict(map(tuple, base["metrics"]["top"]))
    for framework, workers in RUNS:
        rc, rec = run(pagerank, tmp_path, framework, workers, inp, *fixed)
        assert rc == 0 and rec["status"] == "ok", rec["error"]
        m, v = rec["metrics"], rec["verification"]
        assert (m["iterations"], m["converged"], m["stopped_by"]) == (20, False, "max_iter")
        assert v["mode"] == "same-iterations" and v["passed"] and v["l1_error"] <= 1e-12 and v["error"] <= 1e-12
        assert v["reference_iterations"] == 20
        assert 0.0 < m["spmv_s_per_iter"] < rec["timings_s"]["compute"] / 20  # a rank's own rows, no gather
        got = dict(map(tuple, m["top"]))
        assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in want) <= 1e-12
        assert_rank_peaks(m["peak_rss_gib"], workers, ["load", "node_set", "degrees", "exchange", "csr", "compute"])
        assert "NOT CONVERGED" in capfd.readouterr().out, (framework, workers)


@pytest.mark.parametrize("framework, extra, mode", [
    ("ray", (), "converged"),
    ("torch", ("--tol", "0", "--max-iter", "20"), "same-iterations"),
    ("ray", ("--max-iter", "3"), "same-iterations"),  # the default tol, not reached: its own bound allows ~1
])
def test_verification_fails_when_the_kernel_is_perturbed(tmp_path, framework, extra, mode):
    """One arc's weight doubled on worker 0 of the distributed kernel: verification must say so,
    whether the run converged or stopped at --max-iter."""
    inp = write_edges(tmp_path / "r.csv", random_graph(nodes=2000, edges=8000))
    rc, rec = run(pagerank, tmp_path, framework, 2, inp, "--verify", *extra)
    assert rc == 0 and rec["verification"]["passed"] and rec["verification"]["mode"] == mode
    assert "reason" not in rec["verification"] and rec["metrics"]["converged"] is (mode == "converged")
    rc, rec = run(pagerank, tmp_path, framework, 2, inp, "--verify", "--inject-fault", *extra)
    v = rec["verification"]
    assert v["passed"] is False and v["l1_error"] > 1e-9
    # the error line says what was off and by how much, as the record's reason does
    assert rc == 2 and rec["status"] == "failed" and rec["error"].startswith("verification against")
    assert rec["error"].endswith(f"failed: {v['reason']}") and f"L1 distance {v['l1_error']:.3g}" in v["reason"]


def hub_graph(edges: int = 3000, seed: int = 1) -> list[tuple[int, int]]:
    """Directed, 500 sources, most arcs into a few hubs (Pareto-distributed targets), many repeated."""
    import random

    rnd = random.Random(seed)
    return [(rnd.randint(0, 500), int(rnd.paretovariate(1.2)) % 800) for _ in range(edges)]


def test_a_hub_graphs_rounding_is_bounded_and_verification_allows_for_it(tmp_path):
    """A row of 1,700 parallel arcs sums the same terms 1,700 times: the run's float64 result is
    2e-14 (L1) off the exact fixed point, 4x its exact-arithmetic error bound, and --verify used to
    fail it.  error_bound + rounding_bound holds against the exact vector (long double here), and the
    verification allows for both runs' rounding."""
    edges = hub_graph()
    rc, rec = run(pagerank, tmp_path, "torch", 2, write_edges(tmp_path / "h.csv", edges), "--directed", "--verify",
                  "--top", "1000")
    assert rc == 0 and rec["status"] == "ok", rec["error"]
    m, v = rec["metrics"], rec["verification"]
    ids = sorted({u for e in edges for u in e})
    at = {u: i for i, u in enumerate(ids)}
    n, d = len(ids), np.longdouble(0.85)
    a = np.zeros((n, n), dtype=np.longdouble)  # a[v, u]: the arcs u -> v
    for u, w in edges:
        a[at[w], at[u]] += 1
    out = a.sum(axis=0)
    a /= np.where(out > 0, out, 1)
    x = np.full(n, 1 / np.longdouble(n))
    for _ in range(400):
        x = d * (a @ x) + (d * x[out == 0].sum() + 1 - d) / n
    got = np.zeros(n, dtype=np.longdouble)
    for node, score in m["top"]:
        got[at[node]] = score
    assert len(m["top"]) == n
    l1 = float(np.abs(got - x).sum())
    assert m["error_bound"] < l1 <= m["error_bound"] + m["rounding_bound"], (l1, m)
    assert v["passed"] and v["mode"] == "converged" and v["l1_error"] <= v["l1_accuracy"], v
    assert v["l1_accuracy"] == m["error_bound"] + m["rounding_bound"] + v["reference_error_bound"] + \
        v["reference_rounding_bound"]
    assert m["arcs"] == len(edges)  # parallel arcs each, as the reference counts them
    _, ref = run(pagerank, tmp_path, "reference", 1, tmp_path / "h.csv", "--directed")
    assert ref["metrics"]["arcs"] == len(edges) and ref["metrics"]["rounding_bound"] > 0


def test_default_pagerank_with_verify_passes_on_a_generated_graph(tmp_path):
    """What the demo runs: default flags and --verify, on a Friendster-like synthetic graph."""
    inp = data.synthetic(tmp_path / "s.csv", 20_000, 60_000, seed=4, id_span=10**8)
    rc, rec = run(pagerank, tmp_path, "ray", 2, inp, "--verify")
    assert rc == 0 and rec["status"] == "ok", rec["error"]
    assert rec["metrics"]["converged"] and rec["metrics"]["iterations"] < rec["params"]["max_iter"]
    v = rec["verification"]
    assert v["passed"] and v["mode"] == "converged" and v["error"] <= v["accuracy"] <= 1e-9


def test_verify_fails_where_its_reference_did_not_converge(tmp_path, monkeypatch):
    """A reference stopped by its iteration limit proves nothing: the check fails and says why."""
    inp = write_edges(tmp_path / "r.csv", random_graph())
    info = graphio.inspect_input(str(inp))
    args = pagerank.parse_args(["--input", str(inp)])
    ids, x, iters, why, change = pagerank.reference_pagerank(*graphio.read_range(info, info.data_start, info.size))
    assert pagerank.verify(args, info, ids, x, iters, why, change, 0.0)["passed"]
    monkeypatch.setattr(pagerank, "iterations_for", lambda tol, damping: 5)
    v = pagerank.verify(args, info, ids, x, iters, why, change, 0.0)
    assert v["passed"] is False and v["reason"].startswith("the reference did not converge in 5 iterations")


def test_the_reference_does_not_verify_itself(tmp_path):
    """--framework reference --verify would compare the reference with itself: refused, exit 2."""
    inp = write_edges(tmp_path / "r.csv", [(1, 2), (2, 3)])
    p = cli("pagerank", "--framework", "reference", "--verify", "--input", str(inp))
    assert p.returncode == 2 and "--framework reference is that reference: drop --verify" in p.stderr
    p = cli("kmeans", "--framework", "reference", "--method", "blockwise", "--verify", "--input", str(inp))
    assert p.returncode == 2 and "drop --verify" in p.stderr


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
def test_pagerank_seed_method_is_recorded_beside_ours_the_same_for_any_worker_count(tmp_path):
    """--method seed: the seed's per-batch torch_ppr PageRank (3 fixed 1 MiB batches here) next to the
    converged PageRank, with the top-10 overlap and the L1 distance between them."""
    inp = data.synthetic(tmp_path / "s.csv", 30_000, 130_000, seed=6, id_span=10**8)
    seeds = []
    for framework, workers in [("ray", 1), ("torch", 3)]:
        rc, rec = run(pagerank, tmp_path, framework, workers, inp, "--method", "seed", "--block-mb", "1",
                      "--damping", "0.95")
        assert rc == 0 and rec["status"] == "ok", rec["error"]
        m = rec["metrics"]
        assert m["converged"] and m["seed"]["batches"] == 3 and 0.0 < m["seed"]["l1_error"] < 2.0
        assert len(m["top"]) == 10
        seeds.append(m["seed"])
    assert seeds[0] == seeds[1]
    # the seed's algorithm written out here: torch_ppr on each 1 MiB block, summed per node, top 10
    import torch
    from torch_ppr import page_rank

    info = graphio.inspect_input(str(inp))
    summed: dict[int, float] = {}
    for lo, hi in graphio.block_ranges(info, 1 << 20):
        src, dst = graphio.read_range(info, lo, hi)
        ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
        scores = page_rank(edge_index=torch.from_numpy(inv.reshape(2, -1)), num_nodes=len(ids)).numpy()
        for node, score in zip(ids.tolist(), scores.tolist(), strict=True):
            summed[node] = summed.get(node, 0.0) + score
    best = sorted(summed.items(), key=lambda kv: (-kv[1], kv[0]))[:pagerank_seed.KEEP]
    total = sum(score for _, score in best)
    want = [[node, score / total] for node, score in best[:10]]
    assert [node for node, _ in seeds[0]["top"]] == [node for node, _ in want]
    assert np.allclose([s for _, s in seeds[0]["top"]], [s for _, s in want], rtol=1e-5, atol=0)
    # its L1 distance from a converged PageRank (scipy's, damping 0.95) over the whole summed vector
    ids, x = scipy_pagerank(inp, damping=0.95)
    mine = np.array([summed[node] for node in ids.tolist()])
    l1 = float(np.abs(mine / mine.sum() - x).sum())
    assert 0.01 < l1 < 2.0 and seeds[0]["l1_error"] == pytest.approx(l1, rel=1e-6)
    # and the overlap of its top 10 with the converged PageRank's
    top10 = {int(i) for i in ids[np.argsort(-x, kind="stable")[:10]]}
    assert seeds[0]["top_overlap"] == len(top10 & {node for node, _ in want}) / 10


def scipy_pagerank(path: Path, damping: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """An independent converged PageRank for the test: pyarrow's reader, np.unique, scipy, run until
    the L1 change stops falling (float64's floor).  (ids, scores)."""
    t = pacsv.read_csv(path)
    src, dst = t.column(0).to_numpy(), t.column(1).to_numpy()
    del t
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n, s, d = len(ids), inv[:len(src)], inv[len(src):]
    del src, dst, inv
    keep = s != d
    frm, to = np.concatenate([s, d[keep]]), np.concatenate([d, s[keep]])
    del s, d, keep
    out = np.bincount(frm, minlength=n).astype(float)
    w = np.where(out > 0, 1.0 / np.maximum(out, 1.0), 0.0)
    m = sp.csr_array((w[frm], (to, frm)), shape=(n, n))
    del frm, to
    dangling = out == 0
    x, best, stale = np.full(n, 1.0 / n), np.inf, 0
    for _ in range(1000):
        new = damping * (m @ x) + (damping * x[dangling].sum() + 1.0 - damping) / n
        change = float(np.abs(new - x).sum())
        x = new
        stale = stale + 1 if change >= best else 0
        best = min(best, change)
        if change < 1e-17 or stale >= 3:
            break
    assert best < 1e-16
    return ids, x


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_default_pagerank_converges_on_a_3m_node_graph(tmp_path):
    """No tuning flags on 3 M nodes (networkx's n*tol rule stopped after one step here): the top-10
    scores are within 1e-9 (relative) of an independent converged reference."""
    inp = data.synthetic(tmp_path / "g3m.csv", 3_000_000, 6_000_000, seed=1)
    rc, rec = run(pagerank, tmp_path, "torch", 2, inp)
    assert rc == 0 and rec["status"] == "ok", rec["error"]
    m = rec["metrics"]
    assert m["nodes"] == 3_000_000 and m["converged"] is True and m["iterations"] > 50
    assert m["top_error_bound"] <= 1e-9
    ids, x = scipy_pagerank(inp)
    top = np.argsort(-x, kind="stable")[:10]
    assert [node for node, _ in m["top"]] == ids[top].tolist()
    rel = np.abs(np.array([score for _, score in m["top"]]) - x[top]) / x[top]
    assert rel.max() <= 1e-9, rel


# ---------------------------------------------------------------------------------- k-means
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Five well separated integer blobs (ids up to ~1e9, beyond what float32 keeps exact)."""
    rng = np.random.default_rng(11)
    centres = np.array([[1e8, 1e8], [5e8, 2e8], [3e8, 8e8], [9e8, 9e8], [7e8, 5e8]])
    pts = np.concatenate([rng.normal(c, 2e6, size=(400, 2)) for c in centres]).round().astype(np.int64)
    pts = pts[rng.permutation(len(pts))]
    return write_edges(tmp_path_factory.mktemp("km") / "blobs.csv", pts), centres


def test_kmeans_global_same_centroids_everywhere_and_recovers_clusters(tmp_path, planted, capfd):
    inp, centres = planted
    recs = {}
    for framework, workers in [("reference", 1), *RUNS]:
        rc, rec = run(kmeans, tmp_path, framework, workers, inp, "--method", "global", "--k", "5")
        assert rc == 0 and rec["status"] == "ok", rec["error"]
        out = capfd.readouterr().out
        assert f"kmeans {framework} workers={workers}" in out and "NOT CONVERGED" not in out, out
        recs[framework, workers] = rec
    base = np.array(recs["reference", 1]["metrics"]["centroids"])
    assert recs["reference", 1]["metrics"]["converged"] is True
    for key, rec in recs.items():
        m = rec["metrics"]
        assert (m["iterations"], m["converged"], m["stopped_by"]) == (
            recs["reference", 1]["metrics"]["iterations"], True, "no label changed"), key
        np.testing.assert_array_equal(np.array(rec["metrics"]["centroids"]), base, err_msg=str(key))  # exact sums
        assert rec["metrics"]["ch_score"] == pytest.approx(recs["reference", 1]["metrics"]["ch_score"], rel=1e-9)
        assert_rank_peaks(m["peak_rss_gib"], key[1], ["load", "init", "grid", "compute"])
    # a fixed point of Lloyd's step, checked by brute force here: every centroid is the mean of the
    # points nearest to it, and CH is sklearn's for those labels
    pts = np.loadtxt(inp, delimiter=",", skiprows=1)
    labels = np.argmin(((pts[:, None, :] - base[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_allclose(base, [pts[labels == j].mean(axis=0) for j in range(5)], rtol=1e-12)
    assert recs["ray", 2]["metrics"]["ch_score"] == pytest.approx(calinski_harabasz_score(pts, labels), rel=1e-9)
    found = base[np.argsort(base[:, 0] * 10 + base[:, 1])]
    want = centres[np.argsort(centres[:, 0] * 10 + centres[:, 1])]
    assert np.abs(found - want).max() < 1e6  # within half a blob sd of every planted centre
    assert sorted(recs["reference", 1]["metrics"]["cluster_sizes"]) == [400] * 5


def test_kmeans_refuses_ids_whose_exact_sums_could_overflow_int64(tmp_path):
    """1,100 points with ids near 2**53: a cluster's int64 coordinate sum could wrap; one line, exit 2."""
    big = 2**53 - 1000
    inp = write_edges(tmp_path / "big.csv", [(big - i, big - 2 * i) for i in range(1100)])
    p = cli("kmeans", "--framework", "reference", "--k", "2", "--input", str(inp))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "k-means sums coordinates exactly in int64: 1100 points" in p.stderr


def test_kmeans_global_stopped_by_max_iter_says_not_converged(tmp_path, planted, capfd):
    inp, _ = planted
    rc, rec = run(kmeans, tmp_path, "ray", 2, inp, "--method", "global", "--k", "5", "--max-iter", "1",
                  "--verify")
    assert rc == 0 and rec["status"] == "ok", rec["error"]
    assert "NOT CONVERGED: stopped at --max-iter" in capfd.readouterr().out
    m, v = rec["metrics"], rec["verification"]
    assert (m["iterations"], m["converged"], m["stopped_by"]) == (1, False, "max_iter")
    assert v["passed"] and (v["reference_iterations"], v["reference_converged"]) == (1, False)


def test_kmeans_verification_catches_a_wrong_grid(tmp_path, planted, monkeypatch):
    """The verifier is plain Lloyd without the grid: a grid that gives one sure cell the wrong centre
    (what a broken bound would do) must fail verification, as the unchanged grid passes it."""
    inp, _ = planted
    args = ("--method", "global", "--k", "5", "--verify")
    rc, rec = run(kmeans, tmp_path, "reference", 3, inp, *args)
    assert rc == 0 and rec["verification"]["passed"], rec["verification"]
    assert rec["workers"] == 1  # one process, whatever --workers said
    right = pointgrid.PointGrid.sure_owner

    def wrong(self, centers):
        owner = right(self, centers)
        cell = int(np.flatnonzero((owner >= 0) & (self.count > 0))[0])
        owner[cell] = (owner[cell] + 1) % len(centers)
        return owner

    monkeypatch.setattr(pointgrid.PointGrid, "sure_owner", wrong)
    rc, rec = run(kmeans, tmp_path, "reference", 1, inp, *args)
    assert rc != 0 and rec["status"] == "failed" and rec["verification"]["passed"] is False, rec["verification"]
    assert rec["error"].endswith(f"failed: {rec['verification']['reason']}"), rec["error"]


def test_kmeans_ch_equals_sklearn_on_the_same_labels(planted):
    inp, _ = planted
    a = np.loadtxt(inp, delimiter=",", skiprows=1)
    res = kmeans.reference_kmeans(a[:, 0], a[:, 1], 5, 42, 100)
    labels = pointgrid.assign(a[:, 0], a[:, 1], res["centroids"])
    assert res["ch_score"] == pytest.approx(calinski_harabasz_score(a, labels), rel=1e-9)


@pytest.mark.slow
def test_kmeans_blockwise_same_score_on_both_runtimes_and_any_worker_count(tmp_path):
    rng = np.random.default_rng(5)
    inp = write_edges(tmp_path / "b.csv", rng.integers(0, 10**8, (140_000, 2)))  # ~2.4 MB -> 3 blocks
    scores = set()
    for framework, workers in [("ray", 1), ("ray", 3), ("torch", 2), ("torch", 3)]:
        rc, rec = run(kmeans, tmp_path, framework, workers, inp, "--method", "blockwise", "--block-mb", "1")
        assert rc == 0 and rec["metrics"]["blocks"] == 3
        scores.add(rec["metrics"]["ch_score"])
    assert len(scores) == 1
    # the seed's method written out here: KMeans(16, random_state=42) on each 1 MiB block, the mean CH
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    info = graphio.inspect_input(str(inp))
    want = []
    for lo, hi in graphio.block_ranges(info, 1 << 20):
        pts = np.stack(graphio.read_range(info, lo, hi), axis=1).astype(np.float64)
        with threadpool_limits(1):  # the seed's 1-CPU tasks
            labels = KMeans(n_clusters=16, random_state=42, n_init=1).fit(pts).labels_
        want.append(calinski_harabasz_score(pts, labels))
    assert scores.pop() == pytest.approx(sum(want) / 3, rel=1e-9)


# ----------------------------------------------------------------------------- bad inputs
def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCALELAB_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", f"workloads.{module}", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_pagerank_seed_method_with_more_ranks_than_blocks_and_no_semaphore_left(tmp_path):
    """--method seed on a graph of one block with 2 torch ranks: the rank given no block used to end
    the run (a ValueError gathering the batches).  And torch_ppr's progress bar (disabled) made tqdm
    create a process-shared lock in every rank, a named semaphore that a rank, leaving by
    ``os._exit``, never released: the driver's resource tracker warned of "leaked semaphore
    objects" at the end of every such run."""
    inp = write_edges(tmp_path / "s.csv", [(i, (i * 7 + 1) % 50) for i in range(50)])
    p = cli("pagerank", "--framework", "torch", "--workers", "2", "--method", "seed", "--input", str(inp),
            "--output", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "leaked" not in p.stderr, p.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["seed"]["batches"] == 1


@pytest.mark.parametrize("module, flags, message", [
    ("pagerank", ["--max-iter", "0"], "--max-iter must be >= 1, not 0"),
    ("pagerank", ["--tol=-1e-09"], "--tol must be >= 0, not -1e-09"),
    ("pagerank", ["--tol", "0"], "--tol 0 runs exactly --max-iter iterations: give --max-iter"),
    ("kmeans", ["--k", "1"], "--k must be >= 2, not 1"),
    ("kmeans", ["--block-mb", "0"], "--block-mb must be >= 1, not 0"),
    ("pagerank", ["--tol", "nan"], "--tol must be a number >= 0, not nan"),  # nan and inf used to end in a trace
    ("pagerank", ["--tol", "inf"], "--tol must be a number >= 0, not inf"),
    ("pagerank", ["--timeout", "0"], "--timeout must be a number of seconds > 0, not 0"),
    ("kmeans", ["--timeout", "nan"], "--timeout must be a number of seconds > 0, not nan"),
    ("kmeans", ["--seed", "-1"], "--seed must be in 0..4294967295 (what numpy and scikit-learn take as a seed), "
                                 "not -1"),
    ("kmeans", ["--output", "{input}"], "--output {input} is the input file: the record would replace data; "
                                        "give another path"),
    ("pagerank", ["--tol", "2.5"], "--tol must be below 2, not 2.5: the L1 change between two probability "
                                   "vectors is at most 2, so every run would stop after one step (0: exactly "
                                   "--max-iter steps)"),
    ("kmeans", ["--output", "out/"], "argument --output: out/ names a directory; name a file in it, e.g. "
                                     "out/record.json"),
    ("pagerank", ["--output", "hdfs://nn/r.json"],
     "argument --output: hdfs://nn/r.json: the record is written on this machine; give a local path (or a "
     "file:// URI), not a URI of another filesystem"),
])
def test_cli_bad_option_names_it(tmp_path, module, flags, message):
    """Refused before any work, in one line, and nothing written (the input is never replaced)."""
    inp = write_edges(tmp_path / "in.csv", [(1, 2)])
    p = cli(module, "--input", str(inp), *(f.format(input=inp) for f in flags))
    message = message.format(input=inp)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(f"error: {message}"), p.stderr
    assert inp.read_text() == "node1,node2\n1,2\n" and sorted(tmp_path.iterdir()) == [inp]


@pytest.mark.parametrize("mode", ["token", None], ids=["auth-mode-set", "auth-mode-unset"])
def test_joining_a_ray_without_its_token_says_what_to_do(tmp_path, mode):
    """Without the token (no RAY_AUTH_TOKEN, no token file; with RAY_AUTH_MODE=token, as the nodes'
    profile sets it, or without, as a bare shell) the run fails at once in one line that names the
    token (without the mode Ray's own client asks again every second for ~20 s)."""
    import ray

    addr = ray.get_runtime_context().gcs_address  # the module's Ray, with a token this run does not have
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path), SCALELAB_NO_PROGRESS="1")  # (no ~/.ray/auth_token)
    if mode:
        env["RAY_AUTH_MODE"] = mode
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "workloads.pagerank", "--framework", "ray", "--address", addr,
                        "--input", str(write_edges(tmp_path / "g.csv", [(0, 1)]))], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=200)
    took = time.monotonic() - t0
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith(f"error: cannot join the Ray cluster at {addr}: "), p.stderr
    assert last.endswith("check that it is up (`fab status`) and that this shell has its token "
                         "(RAY_AUTH_TOKEN_PATH, set on the nodes by /etc/profile.d/scalelab-ray.sh)"), last
    if mode:  # Ray says what is missing
        assert "Token authentication is enabled but no authentication token was found; " in last, last
    else:  # what the cluster answered
        assert "Authentication token is missing or incorrect" in last, last
    assert took < 12, f"the refusal took {took:.0f} s"


@pytest.mark.parametrize("module, flags, message", [
    ("workloads.pneumonia", ["--workers", "2", "--threads", "2", "--image-size", "64", "--epochs", "1"],
     "--workers 2 with --threads 2 needs 2 worker(s) of 2 CPU(s) each but the Ray cluster's 1 node(s) have 3 CPUs, "
     "room for 1; use --threads 1 or add nodes"),
    ("workloads.cifar_pbt", ["--workers", "2", "--threads", "4", "--trials", "2", "--epochs", "3"],
     "--threads 4 needs 1 trial(s) of 4 CPU(s) each but the Ray cluster's 1 node(s) have 3 CPUs, room for 0; "
     "use --threads 3 or add nodes"),
    ("workloads.xgboost", ["--workers", "1", "--threads", "4"],
     "--workers 1 with --threads 4 needs 1 worker(s) of 4 CPU(s) each but the Ray cluster's 1 node(s) have 3 CPUs, "
     "room for 0; use --threads 3 or add nodes"),
])
def test_joining_a_ray_too_small_for_the_workers_says_so_at_once(tmp_path, module, flags, message):
    """The module's Ray (one node, 3 CPUs) joined with more than it holds: one line, exit 2, no wait.
    Ray Train and Tune used to wait for the CPUs forever (pneumonia: past 150 s, killed).  (The graph
    workloads' actors: test_more_workers_than_cpus_is_a_clear_error.)"""
    import ray

    addr = ray.get_runtime_context().gcs_address
    env = {**os.environ, "SCALELAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", module, "--framework", "ray", "--address", addr, *flags],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=200)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == f"error: {message}", p.stderr[-3000:]
    assert time.monotonic() - t0 < 120


def test_joining_an_address_where_nothing_listens_fails_at_once(tmp_path):
    """Ray alone retries such an address for minutes; the subprocess's 120 s would end that."""
    addr = f"127.0.0.1:{harness.free_port()}"
    p = cli("kmeans", "--framework", "ray", "--address", addr, "--input", str(write_edges(tmp_path / "g.csv", [(0, 1)])))
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"error: cannot join the Ray cluster at {addr}: nothing answers there (Connection refused); check the "
        "address and that the cluster is up (`fab status`)"), p.stderr


def test_kmeans_blockwise_with_no_usable_block_says_what_to_change(tmp_path):
    inp = write_edges(tmp_path / "same.csv", [(5, 5)] * 4)  # 4 points, 1 distinct: no block has 2 clusters
    rc, rec = run(kmeans, tmp_path, "reference", 1, inp, "--method", "blockwise", "--k", "2")
    assert rc == 2 and rec["error"] == ("no block had more than 2 points in 2 clusters or more; use a smaller "
                                        "--k, a bigger --block-mb or --method global")


@pytest.mark.parametrize("module", ["pagerank", "kmeans"])
@pytest.mark.parametrize("case", ["missing", "empty", "header_only"])
def test_cli_bad_input_one_line_exit_2_failed_record(tmp_path, module, case):
    inp = tmp_path / "in.csv"
    if case != "missing":
        inp.write_text("" if case == "empty" else "node1,node2\n")
    out = tmp_path / "rec.json"
    framework = "torch" if case == "empty" else "ray"
    p = cli(module, "--framework", framework, "--workers", "2", "--input", str(inp), "--output", str(out))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(inp) in lines[0], p.stderr
    assert {"missing": "not found", "empty": "empty", "header_only": "no edges"}[case] in lines[0]
    rec = json.loads(out.read_text())
    assert rec["status"] == "failed" and rec["error"]


def test_cli_malformed_line_reference(tmp_path):
    inp = write_edges(tmp_path / "bad.csv", [(1, 2), (2, 3)])
    with open(inp, "a") as f:
        f.write("4,x\n")
    p = cli("pagerank", "--framework", "reference", "--input", str(inp))
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert f"error: {inp}: line 4 (byte offset 20)" in p.stderr


@pytest.mark.parametrize("module, framework", [(pagerank, "ray"), (kmeans, "torch")])
def test_malformed_line_in_another_workers_range_fails_the_run(tmp_path, capsys, module, framework):
    edges = [(i, i + 1) for i in range(1, 2000)]
    inp = write_edges(tmp_path / "bad.csv", edges)
    text = inp.read_text().splitlines(keepends=True)
    text[1500] = "1500,15o1\n"  # in the second half: read by worker 1 of 2
    inp.write_text("".join(text))
    rc, rec = run(module, tmp_path, framework, 2, inp)
    assert rc == 2 and rec["status"] == "failed"
    assert "line 1501" in rec["error"] and "byte offset" in rec["error"] and "15o1" in rec["error"]
    assert "startup" in rec["timings_s"], rec["timings_s"]  # rank 0's steps before the failure (Ray: asked for)
    assert "error:" in capsys.readouterr().err or framework == "torch"  # torch: printed by rank 0's process


@pytest.mark.parametrize("low", [-3, -2**63])
def test_negative_ids_are_rejected_for_pagerank(tmp_path, low):
    """The smallest int64 too, whose negation overflows (it ended the run in a trace)."""
    inp = write_edges(tmp_path / "neg.csv", [(1, 2), (low, 4)])
    rc, rec = run(pagerank, tmp_path, "ray", 2, inp)
    assert rc == 2 and rec["error"].endswith(f"node ids must be non-negative (found {low})")


def test_more_workers_than_cpus_is_a_clear_error(tmp_path):
    inp = write_edges(tmp_path / "g.csv", mixed_shapes())
    rc, rec = run(pagerank, tmp_path, "ray", 64, inp)
    assert rc == 2 and rec["error"] == ("--workers 64 needs 64 worker(s) of 1 CPU(s) each but the Ray cluster's "
                                        "1 node(s) have 3 CPUs, room for 3; use --workers 3 or add nodes")


@pytest.mark.parametrize("framework", ["ray", "torch"])
def test_a_run_past_its_timeout_is_stopped_with_one_line_and_a_failed_record(tmp_path, capsys, framework):
    inp = write_edges(tmp_path / "g.csv", mixed_shapes())
    rc, rec = run(pagerank, tmp_path, framework, 2, inp, "--timeout", "0.01")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and rec["status"] == "failed" and "did not finish within 0.01 s" in rec["error"], rec["error"]
    assert err[-1].startswith("error: the 2 ") and "were stopped" in err[-1]


def test_a_torch_run_past_its_timeout_says_so_without_output(tmp_path):
    """Without --output the parent is the only one left to say why: its ranks were stopped."""
    inp = write_edges(tmp_path / "g.csv", mixed_shapes())
    p = cli("pagerank", "--framework", "torch", "--workers", "2", "--input", str(inp), "--timeout", "0.01")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == ("error: the 2 torch ranks did not finish within 0.01 s; "
                                                 "they were stopped (raise --timeout or check the input size)")


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "ray"])
def test_ctrl_c_stops_a_run_with_one_line_and_a_failed_record(tmp_path, framework):
    """Ctrl-C (SIGINT to the terminal's process group) in a run that would go on for hours: exit 130,
    one line, no traceback, a failed record with the steps timed so far, nothing of the run left."""
    inp = write_edges(tmp_path / "g.csv", mixed_shapes())
    out = tmp_path / "rec.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCALELAB_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workloads.pagerank", "--framework", framework, "--workers", "2",
                             "--input", str(inp), "--tol", "0", "--max-iter", "1000000000", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(15)  # into its iterations (a fault in this test shows as fewer timings, not a pass)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the run is left in its group
        proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted", err
    rec = json.loads(out.read_text())
    assert rec["status"] == "failed" and rec["error"] == "interrupted", rec
    # with the steps timed so far: torch's rank 0 wrote it, a Ray driver asked its rank 0 for them
    assert {"startup", "load", "build"} <= set(rec["timings_s"]), rec["timings_s"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_members(proc.pid):
        time.sleep(0.2)
    assert not group_members(proc.pid), "a process of the run outlived it"


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (zombies waiting for PID 1 aside)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = procs.stat(entry.name)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@contextmanager
def unprivileged():
    """Open files as an unprivileged user where the tests run as root (root may read any file)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_dir():
    """A directory the user of :func:`unprivileged` may write (tmp_path is root's 0700)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="scalelab-inputs-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("module", [pagerank, kmeans])
@pytest.mark.parametrize("framework", ["ray", "torch", "reference"])
@pytest.mark.parametrize("case", ["unreadable", "directory"])
def test_unreadable_input_one_line_exit_2_failed_record(shared_dir, capsys, module, framework, case):
    inp = shared_dir / "in.csv"
    if case == "directory":
        inp.mkdir()
    else:
        write_edges(inp, [(1, 2), (2, 3)]).chmod(0)
    out = shared_dir / "rec.json"
    with unprivileged():
        rc = module.main(["--framework", framework, "--workers", "2", "--input", str(inp),
                          "--output", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and str(inp) in lines[0]
    assert {"unreadable": "permission denied", "directory": "not a file"}[case] in lines[0]
    rec = json.loads(out.read_text())
    assert rec["status"] == "failed" and rec["error"] == lines[0].removeprefix("error: ")


@pytest.mark.parametrize("first", ["1,2.5", "7,node2", "1.0,2"])
def test_cli_numeric_first_line_is_a_bad_edge_not_a_header(tmp_path, first):
    inp = tmp_path / "g.csv"
    inp.write_text(f"{first}\n2,3\n3,1\n")
    out = tmp_path / "rec.json"
    p = cli("pagerank", "--framework", "reference", "--input", str(inp), "--output", str(out))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith(f"error: {inp}: line 1 ") and repr(first) in p.stderr
    assert json.loads(out.read_text())["status"] == "failed"


@pytest.mark.parametrize("module, framework", [("pagerank", "torch"), ("kmeans", "reference"), ("kmeans", "ray")])
@pytest.mark.parametrize("case", ["directory", "no_parent"])
def test_cli_output_that_cannot_be_written_is_one_line_and_leaves_no_temp_file(tmp_path, module, framework, case):
    inp = write_edges(tmp_path / "g.csv", mixed_shapes())
    out = tmp_path / "out"
    out.mkdir()
    target = out if case == "directory" else inp / "rec.json"  # a file's "child": cannot exist
    p = cli(module, "--framework", framework, "--workers", "2", "--input", str(inp), "--output", str(target))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot write the record to {target}: ")
    assert {"directory": "is a directory", "no_parent": "not a directory"}[case] in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["g.csv", "out"]
