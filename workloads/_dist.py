"""The harness of the workloads: launching (local or cluster, Ray or torch), timing and records.

Two ways to run, both for each runtime:

* **local** (default, DESIGN.md): Ray starts a private single-machine cluster with ``--workers`` CPUs
  (127.0.0.1 only, token auth, workers at nice 0: :func:`local_ray_env`); torch spawns
  ``--workers`` processes that rendezvous with gloo on 127.0.0.1.
* **cluster**: with ``--address`` / ``RAY_ADDRESS`` the Ray driver joins that cluster; when torchrun's
  variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) are set, this process is one rank of the job.

A graph workload supplies one SPMD *body* (``body(args, info, rec, comm)``) that every rank runs and
that fills the result record; ``comm`` (:class:`workloads.comm.Comm`) is the only thing that differs
between the runtimes: ``TorchComm`` (gloo), ``RayComm`` (Ray actors calling each other, larger arrays
through the object store) or ``LocalComm`` (one process).  This module wraps the body so that a
user error prints one ``error: ...`` line, exits 2 and writes a failed record, no rank stays blocked in
a collective when another fails (:meth:`Comm.guard`), and ``--timeout`` stops a run that hangs.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import json
import logging
import math
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads import procs
from workloads.comm import COLLECTIVE_TIMEOUT_S, LocalComm, RayComm, TorchComm
from workloads.graphio import InputInfo, inspect_input
from workloads.record import (
    UserError,
    check_output,
    checked,
    fail_record,
    finish_record,
    launch_time,
    new_record,
    phase_peak,
    write_json,
    write_record,
)

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
Body = Callable[[argparse.Namespace, InputInfo, dict, Any], None]


# ----------------------------------------------------------------------------------------- CLI
def add_common_args(p: argparse.ArgumentParser) -> None:
    """The DESIGN.md options every workload takes."""
    p.add_argument("--framework", choices=("ray", "torch", "reference"), default="ray",
                   help="runtime; 'reference' = single process, no runtime")
    p.add_argument("--workers", type=int, default=2, help="worker processes (ranks / Ray actors)")
    p.add_argument("--input", required=True, help="edge list: local path, file:// or hdfs:// URI")
    p.add_argument("--output", help="write the result record (JSON) here")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster instead of starting a local one (default: $RAY_ADDRESS)")
    p.add_argument("--verify", action="store_true", help="also run the single-process reference and compare")
    p.add_argument("--dataset", help="dataset name for the record (default: the file's stem)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop the workers and fail the run after this many seconds (default: no limit; "
                        "--framework reference has no workers to stop and ignores it)")
    p.add_argument("--run-id", help=argparse.SUPPRESS)


def below(low: float, values: dict[str, float | None]) -> str | None:
    """What is wrong with the first of ``values`` (options by their dest names) below ``low``; None if none is."""
    for name, v in values.items():
        if v is not None and not (math.isfinite(v) and v >= low):  # (nan compares False)
            return f"--{name.replace('_', '-')} must be {'' if math.isfinite(v) else 'a number '}>= {low:g}, not {v:g}"
    return None


def at_least(p: argparse.ArgumentParser, low: float, **values: float | None) -> None:
    """Exit 2 (``p.error``) naming the first option below ``low``: ``at_least(p, 1, max_iter=...)``."""
    if (wrong := below(low, values)) is not None:
        p.error(wrong)


def check_run_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (``p.error``, nothing written) for :func:`add_common_args` options no run can use: a
    ``--timeout`` that is not a number of seconds > 0 (0 or less used to start the workers and fail
    them at once), an ``--output`` that is the input file (the record would replace the edge list)."""
    if (wrong := wrong_timeout(args) or output_replaces_input(args)) is not None:
        p.error(wrong)


def wrong_seed(option: str, value: int) -> str | None:
    """numpy, torch and scikit-learn take a seed in 0..2^32-1; outside it each ended the run in its own trace."""
    if not 0 <= value < 2**32:
        return f"--{option} must be in 0..{2**32 - 1} (what numpy and scikit-learn take as a seed), not {value}"
    return None


def wrong_timeout(args: argparse.Namespace) -> str | None:
    """``--timeout`` must be a number of seconds > 0: 0 or less used to start the workers and fail them
    at once, nan to crash or to mean no limit."""
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        return f"--timeout must be a number of seconds > 0, not {args.timeout:g}"
    return None


def output_replaces_input(args: argparse.Namespace) -> str | None:
    """An ``--output`` that is the input file, or a file in the input directory: the record would
    replace data (refused before anything is written, even a failed record)."""
    src = getattr(args, "input", None) or ""  # (none: xgboost; a learning workload's default: a cached set)
    path = src[len("file://"):] if src.startswith("file://") else src
    if args.output and path and "://" not in path:
        local, out = os.path.realpath(path), os.path.realpath(args.output)
        if out == local or os.path.isdir(local) and out.startswith(local + os.sep):
            return (f"--output {args.output} is {'the input file' if out == local else 'inside the input directory'}: "
                    "the record would replace data; give another path")
    return None


def refuse_self_verify(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """For a workload whose ``--verify`` reruns what ``--framework reference`` runs (the same code in one
    process): that pair would compare the run with itself, so it is refused (exit 2)."""
    if args.verify and args.framework == "reference":
        p.error("--verify compares a run with the single-process reference; --framework reference is that "
                "reference: drop --verify, or run --framework ray or torch")


def check_common_args(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, not {args.workers}")
    if torchrun_env() and args.framework == "torch":
        args.workers = int(os.environ["WORLD_SIZE"])


def progress_enabled() -> bool:
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


# -------------------------------------------------------------------------------------- records
def verdict(passed: bool, why_not: str) -> dict[str, Any]:
    """A verification's outcome: ``passed``, and where it failed the ``reason`` (what was off, by how
    much, against what), which the record keeps and the run's error line gives."""
    return {"passed": True} if passed else {"passed": False, "reason": why_not}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _first_sentence(exc: BaseException) -> str:
    """Of an error that runs on for a paragraph (Ray's), what fits on the line before our next step."""
    return _first_line(exc).split(". ", 1)[0].rstrip(".")


def dataset_entry(info: InputInfo, name: str | None) -> dict[str, Any]:
    stem = Path(info.uri.split("://", 1)[-1]).name.split(".")[0]
    return {"name": name or stem, "uri": info.uri, "bytes": info.size, "records": None}


def run_recorded(workload: str, args: argparse.Namespace, params: dict[str, Any], body: Body,
                 comm: Any = None) -> int:
    """Run ``body`` under the record/error contract; only rank 0 (or the driver) reports."""
    leader = comm is None or comm.rank == 0
    rec = new_record(workload, args.framework, workers=args.workers, params=params, run_id=args.run_id)

    def work() -> None:
        info = comm.guard(prepare, args, leader) if comm is not None else prepare(args, leader)
        rec["dataset"] = dataset_entry(info, args.dataset)
        body(args, info, rec, comm)
        rec["timings_s"].setdefault("total", since_launch(args))  # a Ray driver sets it before Ray's teardown
        ver = rec.get("verification")
        if ver is not None and not ver["passed"]:
            raise UserError(f"verification against {ver['reference']} failed: {ver['reason']}")

    return conclude(rec, args, leader, work, summary_line)


def conclude(rec: dict[str, Any], args: argparse.Namespace, leader: bool, work: Callable[[], bool | None],
             summary: Callable[[dict], str]) -> int:
    """The record/error contract of every workload's main: ``work()`` fills ``rec``; a user error is one
    line and exit 2, any other error a failed record with its trace (exit 1), never an ok record; only
    the leader writes the record and prints ``summary(rec)``.  ``work()`` returning False ends a rank
    that reports nothing (a torchrun rank other than 0)."""
    try:
        if work() is False:
            return 0
        finish_record(rec)
        if leader:
            checked(rec)  # a record the model refuses is a bug: a failed record with the reason, never ok
    except UserError as exc:
        return _report_failure(rec, args, leader, f"error: {exc}", str(exc), 2)
    except KeyboardInterrupt:  # Ctrl-C: the record of what ran so far; run_main says "interrupted"
        _report_failure(rec, args, leader, "", "interrupted", 130)
        raise
    except Exception as exc:  # a bug or a runtime failure: keep the trace, never an ok record
        detail = traceback.format_exc() if leader else ""
        return _report_failure(rec, args, leader, detail.rstrip(), exc, 1)
    if leader:
        unsaved = save_record(rec, args.output)
        if unsaved:
            print(f"error: {unsaved}", file=sys.stderr)
            return 2
        print(summary(rec))
    return 0


def prepare(args: argparse.Namespace, leader: bool = True) -> InputInfo:
    """Check the options, that the leader can write ``--output`` and that the input can be read,
    before any work is done."""
    check_common_args(args)
    if leader and args.output:
        check_output(args.output)
    return inspect_input(args.input)


def save_record(rec: dict, output: str | None) -> str | None:
    """Write ``rec`` to ``output`` (if given); the reason it could not be written, else None."""
    if not output:
        return None
    try:
        write_record(rec, output)
    except UserError as exc:
        return str(exc)
    return None


def _report_failure(rec: dict, args: argparse.Namespace, leader: bool, message: str, error: Any,
                    code: int) -> int:
    rec["timings_s"].setdefault("total", None)
    fail_record(rec, error)
    if leader:
        if message:
            print(message, file=sys.stderr)
        unsaved = save_record(rec, args.output)
        if unsaved and unsaved not in message:  # the run failed because of --output: said once
            print(f"error: {unsaved}", file=sys.stderr)
    return code


def summary_line(rec: dict) -> str:
    m = rec["metrics"]
    keep = {k: v for k, v in m.items() if k not in ("top", "centroids", "peak_rss_gib")}  # (in the record)
    if "top" in m:
        keep["top"] = m["top"][:3]
    t = {k: round(v, 3) for k, v in rec["timings_s"].items() if isinstance(v, float)}
    late = " NOT CONVERGED: stopped at --max-iter" if m.get("converged") is False else ""
    return (f"{rec['workload']} {rec['framework']} workers={rec['workers']} nodes={rec['nodes']}: "
            f"{json.dumps(keep)} timings_s={json.dumps(t)}{late}")


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


# ------------------------------------------------------------------------------------------ Ray
def local_ray_env() -> None:
    """The environment of a Ray this process starts on this machine (its daemons and workers inherit it).

    * Loopback only: Ray's servers listen on, and its processes connect to, 127.0.0.1 (Ray's
      single-machine mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; otherwise they listen on every
      interface and use the machine's network address).
    * Token auth with a fresh random token, unless RAY_AUTH_MODE is set: no other local user can
      join or submit work.
    * Workers at nice 0, unless RAY_worker_niceness is set: Ray's default, 15, lets every other
      process (Ray's own daemons included) run first, while torch's ranks run at 0.
    * The workloads package on PYTHONPATH, inherited by the workers from the raylet: no job
      runtime_env is needed, and with one Ray cannot use the workers it prestarts (it starts new
      ones for the actors, about 1.5 s more here).
    * Connections to a socket not listening yet retried every 0.1 s (100 times: the same 10 s in
      all), unless set: the raylet connects to the object store it starts in a thread of its own,
      and where the store is not listening at the first try, Ray's default waits a whole second
      before the next (one local start in two here: ``ray.init`` 3.5 s against 2.5).
    """
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if REPO_ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, *paths) if p)
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "100")
    os.environ.setdefault("RAY_raylet_client_num_connect_attempts", "100")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # Ray read these settings when it was imported: have it read them again
        try:
            from ray._private import ray_constants
            from ray._raylet import AuthenticationTokenLoader, Config
        except ImportError:  # pragma: no cover - moved in another Ray; ray.init then says what is wrong
            return
        ray_constants.ENABLE_RAY_CLUSTER = False
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def start_local_ray(num_cpus: int | None, train: bool = False, attempts: int = 3) -> None:
    """Start a private single-machine Ray (its environment: :func:`local_ray_env`).

    ``train``: for Ray Train / Tune, which need the dashboard's state API (bound to 127.0.0.1 on a
    free port) and find their cluster through RAY_ADDRESS: the GCS port is pinned and exported, so
    they never pick up another user's Ray on this machine."""
    local_ray_env()
    import ray

    for attempt in range(1, attempts + 1):
        if train:  # a fresh port each attempt: a GCS left by a failed attempt keeps its session
            port = free_port()
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            extra = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
                     "log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
        else:
            extra = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        try:
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                     _system_config={"max_direct_call_object_size": RayComm.INLINE_BYTES}, **extra)
            atexit.unregister(stop_ray)  # once, and before Ray's own (last registered, first run)
            atexit.register(stop_ray, exiting=True)
            return
        except Exception as exc:  # Ray's raylet waits only 30 s, which a loaded machine can miss
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                logs = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
                raise UserError(f"local Ray did not start: {_first_line(exc)}; its logs are in the newest "
                                f"session_*/logs under {logs}") from None


def ray_connect(address: str | None, num_cpus: int | None, train: bool = False) -> bool:
    """Join the Ray cluster at ``address`` or start a local one (:func:`start_local_ray`); nothing if
    this process is connected already.  Returns whether this call connected (and should shut down)."""
    import ray

    if ray.is_initialized():
        return False
    if not address:
        start_local_ray(num_cpus, train)
        return True
    # The workers must import this driver's workloads package.  Where the roles shipped it, every node's
    # venv has it on its path already (a .pth file), and Ray gives the actors the workers it prestarted;
    # a runtime_env makes it start new ones with that environment (:func:`local_ray_env`).  A driver
    # run from another checkout sends its path (the same on every node, or the workers fail to import).
    env = None if on_site_path(REPO_ROOT) else {"env_vars": {"PYTHONPATH": REPO_ROOT}}
    try:
        if check_reachable(address):
            check_token(address)
        ray.init(address=address, log_to_driver=train, configure_logging=train, runtime_env=env)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:  # RayError: the token
        raise UserError(f"cannot join the Ray cluster at {address}: {_first_sentence(exc)}; check that it is up "
                        "(`fab status`) and that this shell has its token (RAY_AUTH_TOKEN_PATH, set on the nodes by "
                        "/etc/profile.d/scalelab-ray.sh)") from None
    return True


def on_site_path(directory: str) -> bool:
    """Whether ``directory`` is on this interpreter's path through a ``.pth`` file in its site-packages
    (python_env's scalelab-src.pth), so that any process of this venv imports from it."""
    import site

    want = Path(directory).resolve()
    for base in map(Path, site.getsitepackages()):
        for pth in base.glob("*.pth"):
            try:
                lines = pth.read_text().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            if any(ln.strip() and not ln.startswith(("#", "import ", "import\t"))
                   and (base / ln.strip()).resolve() == want for ln in lines):
                return True
    return False


def check_reachable(address: str, timeout_s: float = 5.0) -> bool:
    """Fail in seconds, where Ray would try for minutes, when nothing answers at a ``host:port``
    address.  Returns whether it checked: ``auto`` and ``ray://`` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit() or (":" in host and not host.startswith("[")):
        return False  # (an IPv6 address without brackets has no port to split off)
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: cannot resolve {host} ({exc.strerror}); "
                        "check the address") from None
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: nothing answers there "
                        f"({exc.strerror or exc}); check the address and that the cluster is up "
                        "(`fab status`)") from None
    return True


def check_token(address: str) -> None:
    """Raise Ray's AuthenticationError at once where the GCS at ``address`` (``host:port``) wants a
    token that this process does not send.  With RAY_AUTH_MODE unset, ``ray.init`` asks again every
    second and gives up after ~20 s; with it set to ``token`` and no token, ``ray.init`` says so at
    once (and this probe would abort the process: Ray's client treats that as a fatal error)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return
    import ray
    from ray._raylet import GcsClient

    try:
        GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        raise
    except Exception:  # noqa: BLE001 (anything else is ray.init's to retry and to say)
        return


LEFTOVER_GRACE_S = 3.0


def stop_ray(exiting: bool = False) -> None:
    """``ray.shutdown()``, and where this process started its Ray, an end to the raylet's worker
    processes still alive :data:`LEFTOVER_GRACE_S` after it.

    An actor that exits gracefully while a non-daemon thread runs in it (Ray Train's controller, now
    and then) is done with Ray but never exits: its raylet has let it go, so the raylet's shutdown
    leaves it to PID 1, 400 MB and for good.  Those are ended by PID (SIGKILL: Ray is done with
    them), checked by their start time.  Registered at exit for a Ray :func:`start_local_ray` started
    (the learning workloads leave Ray to the exit: ``exiting``, which gives the workers' last log lines
    time to arrive, as Ray's own exit handler does); :func:`ray_session` calls it itself."""
    import ray

    try:
        from ray._private import ray_constants, worker
        raylets = worker._global_node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])
    except (ImportError, AttributeError):  # joined a cluster (no node of ours), or another Ray
        raylets = []
    # only a raylet this process started and has not reaped: its PID is still that raylet's
    left = {pid: t for r in raylets if r.process.poll() is None for pid, t in procs.children(r.process.pid).items()}
    ray.shutdown(_exiting_interpreter=exiting)
    procs.end_leftovers(left, LEFTOVER_GRACE_S)


@contextmanager
def ray_session(workers: int, address: str | None) -> Iterator[None]:
    """Reuse a connected Ray, join ``address``, or start a local one; check there are CPUs for ``workers``."""
    owned = ray_connect(address, workers)
    try:
        check_ray_cluster("cpu", workers, 1)
        yield
    finally:
        if owned:
            stop_ray()


PLACEMENT_TIMEOUT_S = 60


def ray_nodes_wanted() -> int | None:
    """SCALELAB_RAY_NODES=N (set by `fab run-experiment`): run on exactly N distinct nodes."""
    raw = os.environ.get("SCALELAB_RAY_NODES")
    return int(raw) if raw else None


def bundle_cpus(workers: int, nodes: int) -> int:
    """The CPUs of each of :func:`ray_actors`' ``nodes`` bundles for ``workers`` 1-CPU actors."""
    return -(-workers // nodes)


def placement_fit_error(workers: int, nodes: int, cpus: list[int]) -> str | None:
    """Why ``workers`` 1-CPU actors cannot be spread over exactly ``nodes`` distinct nodes of ``cpus``
    CPUs (:func:`ray_actors`' placement group, :func:`bundle_cpus` on each); None where they can."""
    per_node = bundle_cpus(workers, nodes)
    fit = sum(c >= per_node for c in cpus)
    if fit >= nodes:
        return None
    return (f"{workers} workers on {nodes} distinct nodes need {per_node} CPU(s) on each, but {fit} of the Ray "
            f"cluster's {len(cpus)} node(s) have that ({'+'.join(map(str, cpus)) or 'no'} CPUs); "
            f"{f'run on {fit} node(s) or ' if fit else ''}add nodes")


def ray_actors(cls: type, workers: int, *args: Any, threads: int = 1) -> list[Any]:
    """One actor per worker (1 CPU each; ``threads``: its methods that may run at once).  With SCALELAB_RAY_NODES=N they go into a STRICT_SPREAD
    placement group of N bundles, i.e. exactly N distinct nodes, the same nodes torchrun would use;
    otherwise they are spread over the cluster's nodes."""
    import ray

    remote = ray.remote(num_cpus=1, max_concurrency=threads)(cls)
    nodes = ray_nodes_wanted()
    if not nodes:
        return [remote.options(scheduling_strategy="SPREAD").remote(rank, workers, *args)
                for rank in range(workers)]
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if (wrong := placement_fit_error(workers, nodes, node_resources()[0])) is not None:
        raise UserError(wrong)  # before the group: Ray would wait for it until the timeout below
    pg = placement_group([{"CPU": bundle_cpus(workers, nodes)}] * nodes, strategy="STRICT_SPREAD")
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        alive = sum(1 for n in ray.nodes() if n["Alive"])
        raise UserError(f"Ray could not place {workers} workers on {nodes} distinct nodes within "
                        f"{PLACEMENT_TIMEOUT_S} s ({alive} nodes alive): check `fab status`") from None
    return [remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=rank % nodes)).remote(rank, workers, *args)
            for rank in range(workers)]


def ray_get(refs: Any) -> Any:
    """ray.get that turns a UserError raised in an actor back into a UserError here."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise


# ------------------------------------------------------------------------------------ Ray ranks
class RayRank:
    """A Ray actor that runs a workload's body as one rank of ``world`` (:class:`workloads.comm.RayComm`); a threaded
    actor, so that its peers' deliveries land while :meth:`run` is busy."""

    def __init__(self, rank: int, world: int) -> None:
        self.comm = RayComm(rank, world)
        self.rec: dict = {}

    def deliver(self, rnd: int, sender: int, array: Any, value: float) -> None:
        self.comm.deliver(rnd, sender, array, value)

    def run(self, body: Body, args: argparse.Namespace, info: InputInfo, rec: dict, peers: list[Any]) -> dict | None:
        """``peers``: every rank's actor, in rank order (a peer may deliver before its own run starts)."""
        self.comm.peers, self.rec = peers, rec
        body(args, info, rec, self.comm)
        return rec if self.comm.rank == 0 else None

    def timings(self) -> dict[str, Any]:
        """The steps timed so far (called while :meth:`run` is busy, from the actor's other thread):
        what a run that fails or is stopped keeps in its record, as a torch rank 0 does."""
        return dict(self.rec.get("timings_s", {}))  # a copy made under the GIL: run() may add a step


def ray_ranks(body: Body) -> Body:
    """The driver side of a Ray run: ``--workers`` :class:`RayRank` actors run ``body`` (SPMD, as the
    torch ranks do); rank 0's record comes back.  A rank that fails ends the others at once."""

    def driver(args: argparse.Namespace, info: InputInfo, rec: dict, comm: Any) -> None:
        import ray

        with ray_session(args.workers, args.address):
            # a rank's run, and its peers' deliveries one at a time
            actors = ray_actors(RayRank, args.workers, threads=2)
            pending = {a.run.remote(body, args, info, rec, actors): r for r, a in enumerate(actors)}
            result = None
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            try:
                while pending:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
                    if not done:
                        raise LaunchTimeout(f"the {args.workers} Ray workers did not finish within "
                                            f"{args.timeout:g} s; {STOPPED}")
                    rank = pending.pop(done[0])
                    out = ray_get(done[0])  # raises the rank's error
                    if rank == 0:
                        result = out
                # every rank is done: the run's end, as a torch rank 0 records it before its group's
                # teardown (ending the actors and a local Ray takes another 1.5-2 s here)
                result["timings_s"]["total"] = since_launch(args)
            except BaseException:  # failed, timed out or Ctrl-C: the record keeps the steps rank 0 timed
                steps = result["timings_s"] if result is not None else _partial_timings(actors[0])
                rec["timings_s"] = {**steps, **rec["timings_s"]}
                raise
            finally:
                for a in actors:
                    ray.kill(a)
        rec.update(result)

    return driver


def _partial_timings(actor: Any, timeout_s: float = 5.0) -> dict[str, Any]:
    """Rank 0's steps so far (:meth:`RayRank.timings`), or nothing where it cannot answer in time (it
    failed, or its node went)."""
    import ray

    try:
        return ray.get(actor.timings.remote(), timeout=timeout_s)
    except (ray.exceptions.RayError, KeyboardInterrupt):
        return {}


# ---------------------------------------------------------------------------------------- torch
def torchrun_env() -> bool:
    """This process is one rank of a torchrun job (or of :func:`spawn_torch`)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class LaunchTimeout(UserError):
    pass


STOPPED = "they were stopped (raise --timeout or check the input size)"  # a graph run's workers, timed out


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


# ------------------------------------------------------------------------------- dispatching
def execute(workload: str, args: argparse.Namespace, params: dict[str, Any], run: Body,
            reference: Body | None = None) -> int:
    """Run a graph workload: ``run`` (the SPMD body) in torch ranks or Ray actors, or in this process
    with one rank (``--framework reference`` without a ``reference`` body of its own)."""
    args.run_id = args.run_id or f"{workload}-{args.framework}-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
    if getattr(args, "launch_t", None) is None:  # spawned ranks get the parent's, with args
        args.launch_t = launch_time()
    if args.framework == "reference":
        args.workers = 1  # one process, whatever --workers said: the record says so
        if reference is None:
            return run_recorded(workload, args, params, run, LocalComm())
        return run_recorded(workload, args, params, reference)
    if args.framework == "ray":
        return run_recorded(workload, args, params, ray_ranks(run))
    if torchrun_env():
        return torch_rank(_torch_target, (workload, args, params, run))
    try:  # fail fast, before starting ranks, on what the parent can see (bad options, input, --output)
        prepare(args)
    except UserError:
        return run_recorded(workload, args, params, run)  # reports it, writes the record

    def record_failure(error: str) -> None:  # where rank 0 could not
        rec = new_record(workload, "torch", workers=args.workers, params=params, run_id=args.run_id)
        fail_record(rec, error)
        unsaved = save_record(rec, args.output)
        if unsaved:
            print(f"error: {unsaved}", file=sys.stderr)

    try:
        codes = spawn_torch(args.workers, torch_rank, (_torch_target, (workload, args, params, run)),
                            timeout_s=args.timeout)
        error, reported = f"torch ranks exited with codes {codes}", codes[0] in (1, 2)  # rank 0 said why
    except LaunchTimeout as exc:  # rank 0 was stopped: it said nothing
        codes, error, reported = [2], str(exc), False
    except KeyboardInterrupt:  # rank 0 records it where the Ctrl-C reached it too (run_main says it)
        if args.output and not _record_written(args.output, args.run_id):
            record_failure("interrupted")
        raise
    if not any(codes):
        return 0
    if args.output:
        reported = _record_written(args.output, args.run_id)
    if not reported:
        print(f"error: {error}", file=sys.stderr)
        if args.output:
            record_failure(error)
    return codes[0] or max(codes)


def _torch_target(comm: TorchComm, workload: str, args: argparse.Namespace, params: dict[str, Any],
                  body: Body) -> int:
    return run_recorded(workload, args, params, body, comm)


def _record_written(path: str, run_id: str) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("run_id") == run_id
    except (OSError, ValueError):
        return False


def maybe(flag: bool, cm: Any) -> Any:
    return cm if flag else nullcontext()


# -------------------------------------------------------------------- learning workloads (torch models)
# One training function ``fn(cfg, ctx)`` runs unchanged as a torch rank (our spawn or torchrun) or as
# a Ray Train worker; the :class:`WorkerContext` hides which set up torch.distributed.
@dataclass
class WorkerContext:
    rank: int
    world: int
    device: Any
    runtime: str                                   # "torch" | "ray"
    wrap_model: Callable[[Any], Any]
    report: Callable[[dict[str, Any]], None]
    started_at: float = field(default_factory=time.time)

    def barrier(self) -> None:
        import torch.distributed as dist
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum floats over ranks (float64 on the model's device; gloo/nccl both handle it)."""
        import torch
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.cpu().tolist()


def pick_device(requested: str, local_rank: int = 0):
    import torch
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        check_device(requested)
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _ddp_wrap(device):
    def wrap(model):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = model.to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model
    return wrap


def torch_context(device_req: str) -> WorkerContext:
    """Context of a torch rank (RANK / WORLD_SIZE / MASTER_* in the environment, :func:`init_torch`)."""
    import torch.distributed as dist
    device = pick_device(device_req, int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_torch("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return WorkerContext(rank, world, device, "torch", _ddp_wrap(device), lambda _m: None)


def ray_context() -> WorkerContext:
    """Context inside a Ray TorchTrainer worker (Ray already set up the process group)."""
    import ray.train
    import ray.train.torch
    tctx = ray.train.get_context()
    return WorkerContext(tctx.get_world_rank(), tctx.get_world_size(), ray.train.torch.get_device(),
                         "ray", ray.train.torch.prepare_model, lambda m: ray.train.report(m))


def run_torch_worker(fn: Callable, cfg: dict) -> dict:
    """Run ``fn(cfg, ctx)`` in this process as one torch rank (torchrun or :func:`spawn_torch`)."""
    import torch.distributed as dist
    ctx = torch_context(cfg["device"])
    try:
        result = fn(cfg, ctx)
        if dist.is_initialized():  # no rank tears its group down while another still talks to it
            dist.barrier()
        return result
    finally:
        gc.collect()  # what the run left in reference cycles (a DDP model holds the group) goes before the group
        if dist.is_initialized():
            dist.destroy_process_group()


def _learning_rank(fn: Callable, cfg: dict, outdir: str) -> int:
    """A spawned rank: rank 0 leaves its result, and any rank its error, as JSON in ``outdir``."""
    rank = os.environ["RANK"]
    try:
        result = run_torch_worker(fn, cfg)
    except KeyboardInterrupt:
        raise  # Ctrl-C: not the rank's error (the launch says it once)
    except BaseException as exc:
        write_json({"error": f"rank {rank}: {type(exc).__name__}: {exc}", "user": isinstance(exc, UserError)},
                   Path(outdir) / f"error-{rank}.json", "the rank's error")
        traceback.print_exc()
        return 1
    if rank == "0":
        write_json(result, Path(outdir) / "result.json", "the rank's result")
    return 0


def launch_torch(fn: Callable, cfg: dict, workers: int, timeout_s: float | None = None) -> dict:
    """torch.distributed: under torchrun run this rank; else spawn ``workers`` local ranks
    (:func:`spawn_torch`, stopped after ``timeout_s``) and return rank 0's result."""
    if torchrun_env():
        world = int(os.environ["WORLD_SIZE"])
        if world != workers:
            raise UserError(f"--workers {workers} but torchrun started WORLD_SIZE={world}; "
                            "pass --workers equal to nnodes x nproc-per-node")
        return run_torch_worker(fn, cfg)
    with tempfile.TemporaryDirectory(prefix="scalelab-ranks-") as outdir:
        codes = spawn_torch(workers, _learning_rank, (fn, cfg, outdir), timeout_s=timeout_s,
                            env={"OMP_NUM_THREADS": str(cfg.get("threads", 1))})
        errors = [json.loads(p.read_text()) for p in sorted(Path(outdir).glob("error-*.json"))]
        if errors:
            first = next((e for e in errors if e["user"]), errors[0])
            raise (UserError if first["user"] else RuntimeError)(first["error"].split(": ", 2)[-1]
                                                                 if first["user"] else first["error"])
        result = Path(outdir) / "result.json"
        if any(codes) or not result.exists():
            raise RuntimeError(f"a torch worker exited with codes {codes}")
        return json.loads(result.read_text())


@contextmanager
def ray_storage(storage: str | None) -> Iterator[str]:
    """Ray's storage_path: the given one, or a private temp dir removed afterwards."""
    if storage:
        if "://" in storage:
            yield storage
            return
        path = Path(storage).resolve()
        if path.exists() and not path.is_dir():  # Tune found it only after Ray had started: a trace
            raise UserError(f"--storage {storage} is a file; give a directory (shared by every node on a cluster)")
        yield str(path)
        return
    tmp = tempfile.mkdtemp(prefix="scalelab-ray-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def experiment_dir(storage: str | None, path: str | None) -> str | None:
    """The directory Ray Tune/Train wrote (its storage_path/name), for the record's ``experiment_dir``:
    None when ``--storage`` was not given, since the private temp storage is gone after the run (on a
    cluster the runner passes ``--storage`` on the shared directory, so every node's files are there)."""
    return str(path) if storage and path else None


def fit_within(fit: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """``fit()`` (a Ray Train or Tune run) with a deadline: past ``timeout_s`` it raises
    :class:`LaunchTimeout`.  The run's actors belong to this driver's job, so Ray stops them when the
    driver ends, which the failed record and exit that follow bring about."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = fit()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread)
            done["error"] = exc

    thread = threading.Thread(target=run, name="ray-fit", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise LaunchTimeout(f"{what} did not finish within {timeout_s:g} s; the run was stopped "
                            "(raise --timeout or check the input size)")
    if "error" in done:
        raise done["error"]
    return done["result"]


def launch_ray_torch(fn: Callable, cfg: dict, workers: int, threads: int, use_gpu: bool,
                     storage: str, name: str, timeout_s: float | None = None) -> dict:
    """Ray Train TorchTrainer with `workers` workers of `threads` CPUs; returns rank 0's result.

    Train V2 keeps only metrics that come with a checkpoint, so rank 0 reports its final result as a
    one-file checkpoint (result.json) in the run's storage; ``experiment_dir`` is the run's directory.
    After ``timeout_s`` the run fails (:func:`fit_within`).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(
        _ray_entry, train_loop_config={"fn": fn, "cfg": cfg},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": threads}),
        run_config=RunConfig(storage_path=storage, name=name))
    result = fit_within(trainer.fit, timeout_s, f"the {workers} Ray Train workers")
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("the Ray workers finished without reporting a result")
    with result.checkpoint.as_directory() as d:
        return {**json.loads((Path(d) / "result.json").read_text()), "experiment_dir": result.path}


def _ray_entry(config: dict) -> None:
    import ray.train
    ctx = ray_context()
    result = config["fn"](config["cfg"], ctx)
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if ctx.rank == 0:
            (Path(d) / "result.json").write_text(json.dumps(result))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"final": 1}, checkpoint=checkpoint)


def node_resources() -> tuple[list[int], list[int]]:
    """The CPUs and the GPUs of each alive node of the connected Ray cluster (one read of its nodes)."""
    import ray
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    return [int(r.get("CPU", 0)) for r in alive], [int(r.get("GPU", 0)) for r in alive]


def worker_room(threads: int, cpus: list[int], gpus: list[int] | None = None) -> int:
    """How many workers of ``threads`` CPUs (and a GPU each where ``gpus`` is given) nodes of ``cpus``
    CPUs (and ``gpus`` GPUs) hold, a worker's share on one node."""
    if gpus is None:
        return sum(c // threads for c in cpus)
    return sum(min(c // threads, g) for c, g in zip(cpus, gpus, strict=True))


def ray_fit_error(workers: int, threads: int, cpus: list[int], gpus: list[int] | None = None,
                  unit: str = "worker") -> str | None:
    """Why ``workers`` workers do not fit (:func:`worker_room`), and what would; None where they fit.
    ``unit="trial"``: one Tune trial that must fit (more trials than fit wait their turn)."""
    slots = worker_room(threads, cpus, gpus)
    if slots >= workers:
        return None
    if unit == "worker":
        asked = f"--workers {workers}" + (f" with --threads {threads}" if threads > 1 else "")
    else:
        asked = f"--threads {threads}"
    each = f"{threads} CPU(s)" + (" and a GPU" if gpus is not None else "")
    have = f"{'+'.join(map(str, cpus)) or 'no'} CPUs" + (f" and {'+'.join(map(str, gpus)) or 'no'} GPUs"
                                                          if gpus is not None else "")
    fit = next((t for t in range(threads - 1, 0, -1) if worker_room(t, cpus, gpus) >= workers), None)
    single = worker_room(1, cpus, gpus)
    todo = (f"--threads {fit}" if fit else f"--workers {slots}" if slots
            else f"--workers {single} --threads 1" if single else "")
    todo = " or ".join(filter(None, [todo, "--device cpu" if gpus is not None else ""]))
    return (f"{asked} needs {workers} {unit}(s) of {each} each but the Ray cluster's {len(cpus)} node(s) have "
            f"{have}, room for {slots}; {f'use {todo} or ' if todo else ''}add nodes")


def check_ray_cluster(device: str, workers: int, threads: int, use_gpu: bool = False, unit: str = "worker") -> None:
    """Before a Ray Train or Tune run (or the graph workloads' actors, 1 CPU each): the GPU it asks for
    (:func:`check_device`) and room for ``workers`` workers at once, a worker's CPUs (and GPU) on one
    node.  Ray Train and Tune would wait for them forever, actors until the placement timeout."""
    check_device(device, ray=True)
    cpus, gpus = node_resources()
    if (wrong := ray_fit_error(workers, threads, cpus, gpus if use_gpu else None, unit)) is not None:
        raise UserError(wrong)


def ray_has_gpu() -> bool:
    return any(node_resources()[1])


def check_device(requested: str, ray: bool = False) -> None:
    """``--device cuda`` needs a GPU where the work runs (this machine, or the Ray cluster), checked
    before anything starts: otherwise spawned ranks fail with tracebacks and Ray waits for a GPU forever."""
    if requested != "cuda":
        return
    if ray and not ray_has_gpu():
        raise UserError("--device cuda but the Ray cluster has no GPU; use --device cpu or auto")
    if not ray:
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")


def default_threads(workers: int) -> int:
    """Threads per worker when not given: the CPUs this process may use (:func:`procs.usable_cpus`)
    split over the workers on this machine.

    Under torchrun the workers on this node are LOCAL_WORLD_SIZE; locally all `workers` share it.
    On a cluster the orchestrator should pass --threads explicitly (cores per node / workers per node).
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", workers if not torchrun_env() else 1))
    return max(1, procs.usable_cpus() // max(1, local))


def threads_per_worker(args: argparse.Namespace) -> int:
    """``--threads``, or :func:`default_threads`.  Where the workers run on this machine (torch's
    ranks, the reference, a local Ray), more threads per worker than it has cores are refused: none
    could run at once, and a large count fails deep in OpenMP.  A joined Ray cluster is checked
    against its nodes instead (:func:`check_ray_cluster`)."""
    if args.threads is None:
        return default_threads(args.workers)
    cores = procs.usable_cpus()
    if args.threads > cores and not (args.framework == "ray" and args.address):
        raise UserError(f"--threads {args.threads} is more than the {cores} CPU(s) this machine lets the run use; "
                        f"use --threads {cores} or fewer")
    return args.threads


def add_learning_args(p: argparse.ArgumentParser) -> None:
    """The options every learning workload takes (its --framework and --input are its own)."""
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker, the same in both frameworks (default: usable CPUs // workers)")
    p.add_argument("--output", help="write the result record (JSON) here")
    p.add_argument("--nodes", type=int, default=1, help="nodes the run spans (recorded; set by the orchestrator)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster instead of starting a local one (default: $RAY_ADDRESS)")
    p.add_argument("--storage", help="Ray storage_path (default: a temp dir; must be shared on a multi-node cluster)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run's random numbers (default 0)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop the run and fail it after this many seconds (torch: the local ranks; Ray: the Train "
                        "workers or Tune trials; default: no limit)")
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # set by `fab run-experiment`


def check_positive(**values: int | None) -> None:
    """A :class:`UserError` (a failed record, exit 2) naming the first option below 1."""
    if (wrong := below(1, values)) is not None:
        raise UserError(wrong)


def record_run(workload: str, args: argparse.Namespace, body: Callable[[dict, float], bool | None],
               summary: Callable[[dict], str]) -> int:
    """The main of the learning workloads: a record filled by ``body(rec, t_start)`` under the same
    contract as the graph workloads' (:func:`run_recorded`: one line and exit 2 for a user error, a
    failed record for any error, only the leader writes).  ``body`` returns False on a torchrun rank
    other than 0.  ``t_start`` is the launch (:func:`workloads.record.launch_time`)."""
    t_start = launch_time()
    rec = new_record(workload, args.framework, workers=args.workers, nodes=args.nodes, run_id=args.run_id)
    leader = int(os.environ.get("RANK", "0")) == 0
    if (wrong := output_replaces_input(args)) is not None:
        print(f"error: {wrong}", file=sys.stderr)
        return 2

    def work() -> bool | None:
        if (wrong := wrong_timeout(args) or wrong_seed("seed", args.seed)) is not None:
            raise UserError(wrong)
        if leader and args.output:
            check_output(args.output)  # before the training, not after it
        return body(rec, t_start)

    return conclude(rec, args, leader, work, summary)
