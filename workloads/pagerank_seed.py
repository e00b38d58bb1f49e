"""The seed paper's PageRank, reproduced to set beside ours (``pagerank --method seed``).

It ran ``torch_ppr.page_rank`` on each fixed-size batch of the edge file on its own (:func:`batch`),
summed each node's scores over the batches and normalised the top 10,000 (:func:`metrics`), which
approximates PageRank only as far as the batches are independent.  Here every rank runs the batches of
its share of the file (:func:`rank_batches`); every rank all-gathers them (:func:`gather`) and rank 0
records the result's top-k, their overlap with this run's converged PageRank and the L1 distance
between the two.
Unlike the seed: exact int64 ids, and no batch dropped.
"""
from __future__ import annotations

import argparse
import threading
import warnings
from typing import Any

import numpy as np

from workloads.comm import Comm
from workloads.graphio import InputInfo, rank_blocks, read_range

KEEP = 10_000  # the seed kept and normalised the top 10,000 summed scores

Batch = tuple[int, np.ndarray, np.ndarray]  # (block index, the batch's ids, their scores)


def batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One batch: ids renumbered 0..k-1 in id order, then ``torch_ppr.page_rank`` with its defaults
    (alpha 0.05 = damping 0.95, edges symmetrised, float32, stop at an L-inf change of 1e-4).
    Returns (ids, scores); the batch's scores sum to 1."""
    import torch
    from torch_ppr import page_rank
    from tqdm import tqdm

    if not hasattr(tqdm, "_lock"):  # torch_ppr's progress bar, disabled, still takes tqdm's lock, by
        # default a process-shared one: a named semaphore that a torch rank, leaving by os._exit, never
        # gives back (the driver's resource tracker then warns of "leaked semaphore objects")
        tqdm.set_lock(threading.RLock())
    ids, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    edge_index = torch.from_numpy(inverse.astype(np.int64).reshape(2, -1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the seed's 1-CPU tasks: float32 sums in one order, whatever the process
    try:
        with warnings.catch_warnings():  # torch's notes on its beta sparse tensors, once per process
            warnings.simplefilter("ignore", UserWarning)
            return ids, page_rank(edge_index=edge_index, num_nodes=len(ids)).numpy().astype(np.float64)
    finally:
        torch.set_num_threads(threads)


def rank_batches(info: InputInfo, block_bytes: int, rank: int, world: int) -> list[Batch]:
    """:func:`batch` on each of rank ``rank``'s share of the file's fixed byte blocks."""
    out = []
    for b, (lo, hi) in rank_blocks(info, block_bytes, rank, world):
        src, dst = read_range(info, lo, hi)
        if len(src):
            out.append((b, *batch(src, dst)))
    return out


def gather(comm: Comm, mine: list[Batch]) -> list[Batch]:
    """Every rank's batches, as three all-gathers of arrays."""
    heads = comm.allgather(np.array([[b, len(i)] for b, i, _ in mine], dtype=np.int64).reshape(-1))
    ids = comm.allgather(np.concatenate([i.astype(np.int64) for _, i, _ in mine] or [np.empty(0, np.int64)]))
    scores = comm.allgather(np.concatenate([s for _, _, s in mine] or [np.empty(0)]))
    out = []
    for head, i, s in zip(heads, ids, scores, strict=True):
        if not len(head):  # a rank given no block (a file of fewer blocks than ranks)
            continue
        cuts = np.cumsum(head.reshape(-1, 2)[:, 1])[:-1]
        out += [(int(b), bi, bs) for b, bi, bs in zip(head.reshape(-1, 2)[:, 0], np.split(i, cuts),
                                                         np.split(s, cuts), strict=True)]
    return out


def metrics(args: argparse.Namespace, ids: np.ndarray, x: np.ndarray, top: list[list[Any]],
            batches: list[Batch]) -> dict[str, Any]:
    """The seed's result beside ours: per-batch scores summed per node (batches in file order, so
    any worker count gives the same sums), the top 10,000 normalised to sum 1, its top-k; compared
    with this run's PageRank (``ids``, ``x``, ``top``) by the overlap of the top-k and the L1
    distance of the whole summed vector (normalised to sum 1)."""
    batches = sorted(batches, key=lambda b: b[0])
    sids, inverse = np.unique(np.concatenate([b[1] for b in batches]), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate([b[2] for b in batches]), minlength=len(sids))
    keep = np.lexsort((sids, -summed))[:KEEP]
    norm = summed[keep] / summed[keep].sum()
    k = min(args.top, len(keep))
    seed_top = [[int(sids[i]), float(v)] for i, v in zip(keep[:k], norm[:k], strict=True)]
    same_nodes = len(sids) == len(ids) and np.array_equal(sids, ids)
    overlap = len({n for n, _ in seed_top} & {n for n, _ in top[:k]}) / max(k, 1)
    return {"algorithm": f"torch_ppr.page_rank per {args.block_mb} MiB batch, scores summed per node, "
                         f"top {KEEP} normalised", "batches": len(batches), "top": seed_top,
            "top_overlap": overlap,
            "l1_error": float(np.abs(summed / summed.sum() - x).sum()) if same_nodes else None,
            "compared_with": f"this run's PageRank, damping {args.damping}"
                             + ("" if args.damping == 0.95 else " (torch_ppr's is 0.95: use --damping 0.95)")}
