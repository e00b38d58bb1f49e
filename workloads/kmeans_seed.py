"""The seed paper's k-means, reproduced (``kmeans --method blockwise``).

It cut the edge file into fixed-size byte blocks (20 MiB), ran scikit-learn's
``KMeans(n_clusters=16, random_state=42)`` on each block's (node1, node2) pairs as 2-D points on its
own (:func:`block_score`), and reported the unweighted mean of the blocks' Calinski-Harabasz scores
(:func:`metrics`).  The blocks do not depend on the worker count and scikit-learn runs with one
thread, so every runtime and worker count gives the same score; each rank scores its share of the
blocks (:func:`rank_scores`) and every rank all-gathers them (:func:`gather`).  Unlike the seed:
exact int64 ids (as float64 coordinates below 2**53), and no block dropped but those too small to
cluster.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from workloads.comm import Comm
from workloads.graphio import InputInfo, block_ranges, rank_blocks, read_range
from workloads.pointgrid import as_points
from workloads.record import UserError

Score = tuple[int, float, float, int]  # (block index, its Calinski-Harabasz score, its inertia, its points)


def block_score(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[float, float] | None:
    """One block: ``KMeans(k, random_state=seed)`` on one thread, then scikit-learn's Calinski-Harabasz
    score of its labels; (score, inertia), or None where the block is too small to cluster (at most
    ``k`` points, or one cluster)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score
    from threadpoolctl import threadpool_limits

    if len(x) <= k:
        return None
    pts = np.stack([x, y], axis=1)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(pts)
    if len(np.unique(km.labels_)) < 2:
        return None
    return float(calinski_harabasz_score(pts, km.labels_)), float(km.inertia_)


def rank_scores(info: InputInfo, block_bytes: int, k: int, seed: int, rank: int, world: int) -> list[Score]:
    """:func:`block_score` on each of rank ``rank``'s share of the file's fixed byte blocks."""
    out = []
    for b, (lo, hi) in rank_blocks(info, block_bytes, rank, world):
        x, y = as_points(*read_range(info, lo, hi))
        res = block_score(x, y, k, seed)
        if res is not None:
            out.append((b, res[0], res[1], len(x)))
    return out


def gather(comm: Comm, mine: list[Score]) -> list[Score]:
    """Every rank's scores, as one all-gather of an array (four numbers a block)."""
    rows = np.concatenate(comm.allgather(np.array(mine, dtype=np.float64).reshape(-1))).reshape(-1, 4)
    return [(int(b), float(ch), float(sse), int(n)) for b, ch, sse, n in rows]


def metrics(k: int, scores: list[Score], info: InputInfo, block_bytes: int) -> dict[str, Any]:
    """The record's metrics from every rank's :func:`rank_scores`: the mean score (a sum in block order,
    so any worker count gives the same), the summed inertia, the blocks skipped."""
    n_blocks = len(block_ranges(info, block_bytes))
    scores = sorted(scores)
    if not scores:
        raise UserError(f"no block had more than {k} points in 2 clusters or more; use a smaller --k, "
                        "a bigger --block-mb or --method global")
    return {"method": "blockwise", "k": k, "ch_score": math.fsum(s[1] for s in scores) / len(scores),
            "inertia": math.fsum(s[2] for s in scores), "centroids": None, "blocks": n_blocks,
            "blocks_skipped": n_blocks - len(scores), "points": sum(s[3] for s in scores)}
