"""The harness of the workloads: launching (local or cluster, Ray or torch), timing and records.

Two ways to run, both for each runtime:

* **local** (the default): Ray starts a private single-machine cluster with ``--workers`` CPUs
  (127.0.0.1 only, token auth, workers at nice 0: :func:`raylaunch.local_ray_env`); torch spawns
  ``--workers`` processes that rendezvous with gloo on 127.0.0.1.
* **cluster**: with ``--address`` / ``RAY_ADDRESS`` the Ray driver joins that cluster; when torchrun's
  variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) are set, this process is one rank of the job.

A graph workload supplies one SPMD *body* (``body(args, info, rec, comm)``) that every rank runs and
that fills the result record; ``comm`` (:class:`workloads.comm.Comm`) is the only thing that differs
between the runtimes: ``TorchComm`` (gloo), ``RayComm`` (Ray actors calling each other, larger arrays
through the object store) or ``LocalComm`` (one process).  The harness wraps the body so that a
user error prints one ``error: ...`` line, exits 2 and writes a failed record, no rank stays blocked in
a collective when another fails (:meth:`Comm.guard`), and ``--timeout`` stops a run that hangs.

Its modules, one concern each (gapbs's harness headers: command line, timer, benchmark loop):

* :mod:`.cli`: the options every workload takes, and their checks;
* :mod:`.runs`: a workload's main under the record/error contract, and a graph run's dispatch;
* :mod:`.track`: what a body calls as it runs (progress, the start-up mark, memory peaks, the verdict);
* :mod:`.raylaunch`: Ray, local or joined, and the graph workloads' ranks as actors;
* :mod:`.torchlaunch`: torch.distributed ranks, spawned here or started by torchrun;
* :mod:`.learning`: one training function as torch ranks or Ray Train workers.

This file holds what they share.
"""
from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workloads.graphio import InputInfo
from workloads.record import UserError

REPO_ROOT = str(Path(__file__).resolve().parents[2])
Body = Callable[[argparse.Namespace, InputInfo, dict, Any], None]


class LaunchTimeout(UserError):
    """A run's workers did not finish within its ``--timeout`` and were stopped."""


STOPPED = "they were stopped (raise --timeout or check the input size)"  # a graph run's workers, timed out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous, or a local Ray's pinned ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env() -> bool:
    """This process is one rank of a torchrun job (or of :func:`torchlaunch.spawn_torch`)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
