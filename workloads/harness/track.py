"""What a workload's body calls as it runs: a progress bar, the start-up mark, each rank's memory
peaks, and the verification's verdict."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from workloads.record import phase_peak


def progress_enabled() -> bool:
    """A bar only where someone watches: stderr is a terminal and SCALELAB_NO_PROGRESS is unset."""
    return sys.stderr.isatty() and not os.environ.get("SCALELAB_NO_PROGRESS")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a rich bar on a TTY, nothing otherwise."""
    if not progress_enabled():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def verdict(passed: bool, why_not: str) -> dict[str, Any]:
    """A verification's outcome: ``passed``, and where it failed the ``reason`` (what was off, by how
    much, against what), which the record keeps and the run's error line gives."""
    return {"passed": True} if passed else {"passed": False, "reason": why_not}


def since_launch(args: argparse.Namespace) -> float:
    """Seconds since the run was launched (:func:`workloads.record.launch_time`)."""
    return time.time() - args.launch_t


def mark_startup(args: argparse.Namespace, rec: dict) -> None:
    """``startup`` = launch until the workers are ready: interpreter start and imports, then Ray's
    start-up and actors, or torch's spawn (or torchrun) and rendezvous.  The same span in every runtime."""
    rec["timings_s"]["startup"] = since_launch(args)


def rank_peaks(comm: Any, peaks: dict[str, int]) -> dict[str, list[float | None]]:
    """Every rank's ``peaks`` (phase -> its largest resident size in that phase, :func:`workloads.record.timer`)
    in GiB, a list in rank order per phase (None: not measurable there), for the record's
    ``peak_rss_gib``: where each rank peaked, and how far apart the ranks are.  A collective: every rank
    calls it, with the same phases (``comm`` None: this process alone)."""
    mine = np.array(list(peaks.values()), dtype=np.int64)
    marks = [mine] if comm is None else comm.allgather(mine)
    return {phase: [round(int(m[i]) / 2**30, 3) if m[i] >= 0 else None for m in marks]
            for i, phase in enumerate(peaks)}


@contextmanager
def results_phase(rec: dict, peaks_gib: dict[str, list[float | None]]) -> Iterator[None]:
    """Rank 0 making the results (ids, top-k, the record, ``--verify``): its peak there is ``results``,
    set with the ranks' ``peaks_gib`` (:func:`rank_peaks`) as the record's ``peak_rss_gib``."""
    last: dict[str, int] = {}
    with phase_peak(last, "results"):
        yield
    rec["metrics"]["peak_rss_gib"] = {**peaks_gib, **rank_peaks(None, last)}


def maybe(flag: bool, cm: Any) -> Any:
    """``cm`` where ``flag`` holds (rank 0's progress bar), else a context that does nothing."""
    return cm if flag else nullcontext()
