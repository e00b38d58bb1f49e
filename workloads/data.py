"""Datasets: the seed's cuts of SNAP com-Friendster, or synthetic Friendster-like graphs of the same size.

``generate(name, out_dir, from_snap=None, seed=0)`` writes ``out_dir/<name>.csv`` (header
``node1,node2``, one undirected edge per line) and returns its path.

* With ``from_snap`` (``com-friendster.ungraph.txt`` or ``.txt.gz``) it cuts the file as the seed's
  ``data/resize.py`` did: the first N bytes of data lines, ``#`` comments skipped, tab -> comma, ending at
  a whole line (N = 0.01 / 1 / 2.5 / 10 GiB; ``tiny`` = the first 2,000 edges).
* Without it, a configuration model (stub matching) with lognormal degrees (sigma 1.3, capped, every
  node at least degree 1) with the seed file's edge and node counts; self-loops are re-paired, edges
  are written ``u < v`` sorted by ``u`` like SNAP's file, with ids spread over SNAP's id range.  It is
  streamed through bucket files so the 620 M-edge ``data`` needs about 1.5 GB of memory, not 15.
  Repeated pairs are kept (about 0.01% of edges: parallel edges in a multigraph).
"""
from __future__ import annotations

import argparse
import gzip
import math
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from workloads.harness import track
from workloads.record import UserError, run_main

FRIENDSTER_MAX_ID = 124_836_180  # largest id in com-friendster.ungraph.txt
HEADER = b"node1,node2\n"
STUBS_PER_BUCKET = 1 << 25
EDGES_PER_RANGE = 1 << 24
NODE_CHUNK = 1 << 22


@dataclass(frozen=True)
class Spec:
    """A dataset: the seed's byte cut (None for tiny) and the edge/node counts of that cut."""

    name: str
    cut_bytes: int | None
    edges: int
    nodes: int
    id_span: int


DATASETS: dict[str, Spec] = {s.name: s for s in (
    Spec("tiny", None, 2_000, 400, 4_000),
    # test_data's counts are not in the seed report: estimated from 16.1 B/line and the prefix trend.
    Spec("test_data", int(0.01 * 1024**3), 667_000, 250_000, FRIENDSTER_MAX_ID),
    Spec("data_1", 1 * 1024**3, 66_781_840, 11_191_238, FRIENDSTER_MAX_ID),
    Spec("data_2", int(2.5 * 1024**3), 163_532_542, 21_148_573, FRIENDSTER_MAX_ID),
    Spec("data", 10 * 1024**3, 620_186_769, 41_480_685, FRIENDSTER_MAX_ID),
)}


def spec_for(name: str) -> Spec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------- SNAP cutting
def snap_lines(path: Path, block: int = 1 << 24) -> Iterator[bytes]:
    """Blocks of whole data lines from a SNAP edge list (plain or gzip), comments dropped, tab -> comma."""
    opener = gzip.open if path.suffix == ".gz" else open
    rest = b""
    with opener(path, "rb") as f:
        while True:
            try:
                chunk = f.read(block)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # named .gz, but not (or not all) gzip
                raise UserError(f"{path} is not a whole gzip file ({exc}); give com-friendster.ungraph"
                                ".txt.gz as SNAP serves it, or the file unpacked") from None
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            yield _clean(data[:cut])
    if rest.strip():
        yield _clean(rest + b"\n")


def _clean(data: bytes) -> bytes:
    if b"#" in data:
        data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"#"))
    return data.replace(b"\t", b",").replace(b" ", b",")


EDGE_LINE = re.compile(rb"\d+,\d+\r?")  # a SNAP line after _clean: two ids


def cut_snap(src: Path, dst: Path, spec: Spec, advance: Callable[[int], None]) -> int:
    """Write the seed's prefix cut of ``src`` to ``dst``; returns the number of edges written."""
    budget = spec.cut_bytes
    lines_left = None if budget is not None else spec.edges
    edges = 0
    with open(dst, "wb") as out:
        out.write(HEADER)
        for block in snap_lines(src):
            if edges == 0 and block and not EDGE_LINE.fullmatch(first := block.split(b"\n", 1)[0]):
                raise UserError(f"{src}: its first edge line is {first[:60]!r}, not two node ids "
                                "(is it com-friendster.ungraph.txt?)")
            if budget is not None and len(block) > budget:
                block = block[:block.rfind(b"\n", 0, budget) + 1]
            if lines_left is not None:
                parts = block.split(b"\n", lines_left)
                block = b"\n".join(parts[:lines_left]) + b"\n" if len(parts) > lines_left else block
            out.write(block)
            n = block.count(b"\n")
            edges += n
            advance(len(block) if budget is not None else n)
            if budget is not None:
                budget -= len(block)
                if budget <= 0 or len(block) == 0:
                    break
            else:
                lines_left -= n
                if lines_left <= 0:
                    break
    if edges == 0:
        raise UserError(f"{src} holds no edges (is it com-friendster.ungraph.txt?)")
    return edges


# ------------------------------------------------------------------------------ synthetic graph
def degree_sequence(n: int, edges: int, rng: np.random.Generator, sigma: float = 1.3,
                    cap: int = 5000) -> np.ndarray:
    """Heavy-tailed degrees, each >= 1, summing to exactly 2 * edges (int64)."""
    total = 2 * edges
    if total < n:
        raise UserError(f"{edges} edges cannot touch {n} nodes")
    cap = max(2, min(cap, n - 1))
    w = rng.lognormal(0.0, sigma, n)
    w *= (total - n) / w.sum()
    w = np.minimum(w, cap - 1)
    d = 1 + np.floor(w).astype(np.int64) + (rng.random(n) < (w - np.floor(w)))
    diff = total - int(d.sum())
    while diff != 0:
        if diff > 0:
            idx = rng.choice(np.flatnonzero(d < cap), size=diff)
            np.add.at(d, idx, 1)
        else:
            cand = np.flatnonzero(d > 1)
            idx = rng.choice(cand, size=min(-diff, len(cand)), replace=False)
            d[idx] -= 1
        diff = total - int(d.sum())
    return d


def sparse_ids(n: int, span: int, rng: np.random.Generator) -> np.ndarray:
    """n increasing ids spread over about [1, span] (gaps uniform around span/n), like SNAP's."""
    gap = max(1.0, span / n)
    hi = max(1, int(round(2 * gap - 1)))
    return np.cumsum(rng.integers(1, hi + 1, size=n, dtype=np.int64))


def range_cuts(n: int, parts: int) -> np.ndarray:
    """Node-index cuts giving each part about the same number of edges keyed by min(u, v)."""
    r = np.arange(parts + 1) / parts
    return np.unique(np.round(n * (1.0 - np.sqrt(1.0 - r))).astype(np.int64))


def pair_stubs(stubs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle stubs, pair neighbours, re-pair self-loops; (m, 2) int32 with u <= v."""
    rng.shuffle(stubs)
    pairs = stubs.reshape(-1, 2)
    for _ in range(20):
        loops = np.flatnonzero(pairs[:, 0] == pairs[:, 1])
        if len(loops) == 0 or len(pairs) < 2:
            break
        other = rng.integers(len(pairs), size=len(loops))
        a, b = pairs[loops, 1].copy(), pairs[other, 1].copy()
        pairs[loops, 1], pairs[other, 1] = b, a
    pairs.sort(axis=1)
    return pairs


def synthesize(spec: Spec, dst: Path, seed: int, tmp: Path, advance: Callable[[int], None]) -> int:
    """Configuration-model graph streamed through bucket files; returns edges written."""
    rng = np.random.default_rng(seed)
    n, e = spec.nodes, spec.edges
    deg = degree_sequence(n, e, rng)
    ids = sparse_ids(n, spec.id_span, rng)
    n_buckets = max(1, math.ceil(2 * e / STUBS_PER_BUCKET))
    cuts = range_cuts(n, max(1, math.ceil(e / EDGES_PER_RANGE)))
    tmp.mkdir(parents=True, exist_ok=True)
    bucket_files = [tmp / f"stubs{b}.i32" for b in range(n_buckets)]
    range_files = [tmp / f"edges{r}.i32" for r in range(len(cuts) - 1)]
    for path in bucket_files + range_files:
        path.write_bytes(b"")
    # pass 1: every stub to a random bucket
    for a in range(0, n, NODE_CHUNK):
        b = min(n, a + NODE_CHUNK)
        stubs = np.repeat(np.arange(a, b, dtype=np.int32), deg[a:b])
        which = rng.integers(n_buckets, size=len(stubs), dtype=np.int32) if n_buckets > 1 else None
        for k, path in enumerate(bucket_files):
            with open(path, "ab") as f:
                (stubs if which is None else stubs[which == k]).tofile(f)
        advance(len(stubs) // 2)
    # pass 2: match within buckets, file the edges by the range of their smaller end
    carry = np.empty(0, dtype=np.int32)
    for path in bucket_files:
        stubs = np.concatenate([carry, np.fromfile(path, dtype=np.int32)])
        path.unlink()
        carry, stubs = (stubs[-1:], stubs[:-1]) if len(stubs) % 2 else (np.empty(0, np.int32), stubs)
        pairs = pair_stubs(stubs, rng)
        owner = np.searchsorted(cuts, pairs[:, 0], side="right") - 1
        for r, rpath in enumerate(range_files):
            with open(rpath, "ab") as f:
                pairs[owner == r].tofile(f)
        advance(len(pairs))
    # pass 3: sort each range by (u, v), map to sparse ids, write CSV
    written = 0
    with open(dst, "wb") as out:
        out.write(HEADER)
        for rpath in range_files:
            pairs = np.fromfile(rpath, dtype=np.int32).reshape(-1, 2)
            rpath.unlink()
            key = np.sort(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])
            del pairs
            table = pa.table({"node1": ids[key // n], "node2": ids[key % n]})
            pacsv.write_csv(table, out, write_options=pacsv.WriteOptions(include_header=False))
            written += len(key)
            advance(len(key))
    return written


# ------------------------------------------------------------------------------------------ API
def generate(name: str, out_dir: str | Path, from_snap: str | Path | None = None, seed: int = 0) -> Path:
    """Write dataset ``name`` to ``out_dir/<name>.csv`` (from SNAP if given, else synthetic)."""
    spec = spec_for(name)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (a file in its place or further up, /proc, no permission)
        why = "it is a file" if out_dir.is_file() else (exc.strerror or str(exc)).lower()
        raise UserError(f"cannot write {name} to {out_dir}: {why}; give --out a directory you can "
                        "write") from None
    final = out_dir / f"{name}.csv"
    part = out_dir / f".{name}.csv.part"
    tmp = out_dir / f".{name}.tmp"
    try:
        if from_snap is not None:
            src = Path(from_snap)
            if not src.is_file():
                raise UserError(f"SNAP file not found: {src} (download com-friendster.ungraph.txt.gz from SNAP)")
            total = spec.cut_bytes or spec.edges
            with track.progress(f"cutting {name} from {src.name}", total) as advance:
                cut_snap(src, part, spec, advance)
        else:
            with track.progress(f"generating {name} ({spec.edges:,} edges)", 3 * spec.edges) as advance:
                synthesize(spec, part, seed, tmp, advance)
        part.replace(final)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def synthetic(path: str | Path, nodes: int, edges: int, seed: int = 0, id_span: int | None = None) -> Path:
    """Write a synthetic graph of any size (the generator of the named datasets) to ``path``; ids are
    spread over ``id_span`` (default 2 * nodes: dense enough for the bitmap relabelling)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = Spec(path.stem, None, edges, nodes, id_span or 2 * nodes)
    part = path.with_name(f".{path.name}.part")
    tmp = path.with_name(f".{path.stem}.tmp")
    try:
        synthesize(spec, part, seed, tmp, lambda n: None)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workloads.data", description=__doc__.split("\n")[0])
    p.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--out", default="data", help="output directory (default: data/)")
    p.add_argument("--from-snap", help="cut the real com-friendster.ungraph.txt(.gz) instead of synthesising")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic graph")
    args = p.parse_args(argv)
    path = generate(args.name, args.out, args.from_snap, args.seed)
    print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
