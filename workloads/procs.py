"""The processes a run starts, and their end: a run leaves nothing running (by PID, never by name).

* :func:`usable_cpus`: the CPUs a run's workers share;
* :func:`children` and :func:`end_leftovers`: another program's children (a local Ray's raylet's
  workers), each known by its PID and start time, ended if still there after a grace period;
* :func:`die_with_parent`, :func:`spawning` and :func:`stop`: the local torch ranks
  (:func:`workloads.harness.torchlaunch.spawn_torch`), which end with their parent, ignore SIGINT until their
  target runs, and are terminated, then killed, by their handles.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (a container's cpuset, ``taskset``, a batch
    scheduler's share), not every CPU the machine has, which ``os.cpu_count()`` counts; ``nproc``'s number."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command (field 3, the state, first); None where it has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """When ``pid`` started (field 22), which tells it from a later process given the same PID; None
    where it has ended, a zombie waiting to be reaped included."""
    fields = stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def children(parent: int) -> dict[int, str]:
    """The running processes whose parent is ``parent``, with their start times; none without /proc."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = stat(entry.name)
        if fields is not None and fields[0] != "Z" and int(fields[1]) == parent:
            found[int(entry.name)] = fields[19]
    return found


def end_leftovers(procs: dict[int, str], grace_s: float) -> list[int]:
    """SIGKILL those of ``procs`` (PID -> start time, from :func:`children`) still running ``grace_s``
    from now; returns their PIDs."""
    deadline = time.monotonic() + grace_s
    while True:
        procs = {pid: t for pid, t in procs.items() if start_time(pid) == t}
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in procs:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return list(procs)


def die_with_parent(parent: int) -> None:
    """Have the kernel end this process when its parent ends (Linux's PR_SET_PDEATHSIG), so that a
    spawned rank never outlives its launch, even one killed outright (``kill -9``, the OOM killer)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) != 0:  # 1: PR_SET_PDEATHSIG
            return  # refused (a seccomp filter): the launch's own stop is all there is
    except (OSError, AttributeError):  # not Linux: likewise
        return
    if os.getppid() != parent:  # the parent ended before the call
        os._exit(1)


def interruptible() -> bool:
    """Whether SIGINT (Ctrl-C) interrupts this process: not where it was started with SIGINT ignored
    (a background job of a non-interactive shell), which its children keep."""
    return signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None)


@contextmanager
def spawning() -> Iterator[None]:
    """While children are started: SIGINT ignored, which they inherit until they take it back
    (``signal.signal(SIGINT, signal.default_int_handler)`` where their work starts), so that a Ctrl-C
    while a rank still imports its modules is no traceback of its (its parent stops it); and blocked
    here, so that one arriving meanwhile still reaches this process, once this ends."""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread sets handlers)
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a blocked signal stays pending, ignored or not
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def stop(procs: list[Any], wait_s: float, after_s: float = 0.0) -> None:
    """End ``multiprocessing`` children by their handles: those still running ``after_s`` from now are
    terminated, those still running ``wait_s`` after that killed."""
    started = [p for p in procs if p.pid is not None]

    def running_after(delay: float) -> list[Any]:
        deadline = time.monotonic() + delay
        for p in started:
            p.join(max(deadline - time.monotonic(), 0))
        return [p for p in started if p.is_alive()]

    for p in running_after(after_s):
        p.terminate()
    for p in running_after(wait_s):
        p.kill()
    running_after(5.0)
