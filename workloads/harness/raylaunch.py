"""Ray for the workloads: a private local Ray or a joined cluster, the graph workloads' ranks as actors
(:class:`RayRank`, each a :class:`workloads.comm.RayComm`), and the room a cluster has for workers."""
from __future__ import annotations

import argparse
import atexit
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workloads import procs
from workloads.comm import RayComm
from workloads.graphio import InputInfo
from workloads.harness import REPO_ROOT, STOPPED, Body, LaunchTimeout, free_port
from workloads.harness.track import since_launch
from workloads.record import UserError


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _first_sentence(exc: BaseException) -> str:
    """Of an error that runs on for a paragraph (Ray's), what fits on the line before our next step."""
    return _first_line(exc).split(". ", 1)[0].rstrip(".")


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


def user_error_of(exc: BaseException) -> UserError | None:
    """The user's error behind a Ray failure (raised in an actor, a task or a Ray Train worker, where
    it read a bad input) as this driver's :class:`UserError` (one line, exit 2); None for any other."""
    failures = getattr(exc, "worker_failures", None) or {}  # (Ray Train's WorkerGroupError: by rank)
    for failure in (exc, *failures.values()):
        cause = getattr(failure, "cause", failure)  # (a RayTaskError wraps the remote exception)
        if isinstance(cause, UserError):
            return UserError(str(cause))
    return None


def ray_get(refs: Any) -> Any:
    """ray.get that turns a UserError raised in an actor back into a UserError here."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if (user := user_error_of(exc)) is not None:
            raise user from None
        raise


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
    """Before a Ray Train or Tune run (or the graph workloads' actors, 1 CPU each): a GPU where
    ``device`` is cuda, and room for ``workers`` workers at once, a worker's CPUs (and GPU) on one
    node.  Ray Train and Tune would wait for them forever, actors until the placement timeout."""
    cpus, gpus = node_resources()
    if device == "cuda" and not any(gpus):
        raise UserError("--device cuda but the Ray cluster has no GPU; use --device cpu or auto")
    if (wrong := ray_fit_error(workers, threads, cpus, gpus if use_gpu else None, unit)) is not None:
        raise UserError(wrong)


def ray_has_gpu() -> bool:
    """Whether an alive node of the connected Ray cluster has a GPU (what ``--device auto`` uses)."""
    return any(node_resources()[1])
