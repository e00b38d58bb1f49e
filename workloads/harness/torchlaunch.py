"""torch.distributed for the workloads: the rendezvous, and ranks spawned on this machine or started
by torchrun, each running its body with a :class:`workloads.comm.TorchComm`."""
from __future__ import annotations

import datetime as dt
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from workloads import procs
from workloads.comm import COLLECTIVE_TIMEOUT_S, TorchComm
from workloads.harness import REPO_ROOT, STOPPED, LaunchTimeout, free_port

RENDEZVOUS_TIMEOUT = dt.timedelta(seconds=COLLECTIVE_TIMEOUT_S)  # the rendezvous and every gloo collective


def init_torch(backend: str = "gloo") -> None:
    """Join the process group from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT.

    Under torchrun the agent's store is used (``env://``).  Otherwise rank 0 hosts the rendezvous
    store on a socket bound to MASTER_ADDR only (127.0.0.1 for local runs, the private address the
    runner passes on a cluster): torch's own store listens on every interface.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if "TORCHELASTIC_RUN_ID" in os.environ:
        dist.init_process_group(backend, init_method="env://", timeout=RENDEZVOUS_TIMEOUT)
        return
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    listener = None
    if rank == 0:
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                        backlog=max(world, 16))
    try:
        store = dist.TCPStore(host, port, world, rank == 0, timeout=RENDEZVOUS_TIMEOUT,
                              master_listen_fd=listener.fileno() if listener else None, use_libuv=False)
    finally:
        if listener is not None:
            listener.detach()  # the store owns the descriptor now
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=RENDEZVOUS_TIMEOUT)


def _torch_rank_main(rank: int, world: int, env: dict[str, str], target: Callable[..., Any],
                     args: tuple[Any, ...], parent: int, interruptible: bool) -> None:
    procs.die_with_parent(parent)
    os.environ.update(env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    try:
        if interruptible:  # ignored since the spawn (:func:`workloads.procs.spawning`)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        code = int(target(*args) or 0)
    except KeyboardInterrupt:  # Ctrl-C reaches every rank of the terminal's process group: the parent says it once
        code = 130
    # The rank's work is done and written.  It leaves without the interpreter's finalization, where
    # torch's gloo threads, torn down in no set order, now and then abort the process ('terminate
    # called without an active exception', exit -6 after its training had finished: seen once in
    # a clean-clone CI).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def torch_rank(target: Callable[..., int], args: tuple[Any, ...]) -> int:
    """Join the process group (:func:`init_torch`), run ``target(comm, *args)``, leave the group."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_torch()
    try:
        return int(target(TorchComm(), *args) or 0)
    finally:
        dist.destroy_process_group()


def spawn_torch(workers: int, target: Callable[..., Any], args: tuple[Any, ...], grace_s: float = 30.0,
                timeout_s: float | None = None, env: dict[str, str] | None = None) -> list[int]:
    """Start ``workers`` local ranks running ``target(*args)`` (rendezvous on 127.0.0.1); return their
    exit codes.  Ranks still running ``grace_s`` after one failed, or when ``timeout_s`` has passed,
    are terminated (raises :class:`LaunchTimeout` for the latter)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
           "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p),
           **(env or {})}
    ctx = mp.get_context("spawn")
    ranks = [ctx.Process(target=_torch_rank_main, daemon=False,
                         args=(r, workers, env, target, args, os.getpid(), procs.interruptible()))
             for r in range(workers)]
    start, first_failure, timed_out = time.monotonic(), None, False
    try:
        with procs.spawning():
            for p in ranks:
                p.start()
        while any(p.is_alive() for p in ranks):
            for p in ranks:
                p.join(timeout=0.2)
            now = time.monotonic()
            if first_failure is None and any(p.exitcode not in (None, 0) for p in ranks):
                first_failure = now
            timed_out = timed_out or (timeout_s is not None and now - start > timeout_s)
            if timed_out or (first_failure is not None and now - first_failure > grace_s):
                procs.stop(ranks, wait_s=5)
    except KeyboardInterrupt:  # a Ctrl-C reached the ranks too: they end by themselves (rank 0 records it)
        procs.stop(ranks, wait_s=5, after_s=5)
        raise
    except BaseException:  # a failed start, or an error here: the ranks end with it
        procs.stop(ranks, wait_s=5)
        raise
    if timed_out:
        raise LaunchTimeout(f"the {workers} torch ranks did not finish within {timeout_s:g} s; {STOPPED}")
    return [int(p.exitcode if p.exitcode is not None else 1) for p in ranks]
