"""The command-line options every workload takes, and their checks: a wrong value is one line (exit 2)
before anything runs."""
from __future__ import annotations

import argparse
import math
import os
import urllib.parse

from workloads import procs
from workloads.harness import torchrun_env
from workloads.record import UserError


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every workload takes."""
    p.add_argument("--framework", choices=("ray", "torch", "reference"), default="ray",
                   help="runtime; 'reference' = single process, no runtime")
    p.add_argument("--workers", type=int, default=2, help="worker processes (ranks / Ray actors)")
    p.add_argument("--input", required=True, help="edge list: local path, file://, hdfs:// or webhdfs:// URI")
    add_output_arg(p)
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


def add_output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=output_file, metavar="FILE",
                   help="write the result record (JSON) to this file (a local path or file:// URI)")


def output_file(value: str) -> str:
    """``--output``, as the path of a file on this machine: ``file://`` and ``~`` taken as ``--input``
    takes them; another URI, or a path that names a directory (``dir/``, ``.``), refused (exit 2),
    where it would have written ``./file:/...`` or a file named like the directory."""
    path = value
    if "://" in value:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise argparse.ArgumentTypeError(f"{value}: the record is written on this machine; give a local "
                                             "path (or a file:// URI), not a URI of another filesystem")
        path = urllib.parse.unquote(parts.path)
    path = os.path.expanduser(path)
    if not path or path.endswith(os.sep) or os.path.basename(path) in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value} names a directory; name a file in it, e.g. "
                                         f"{os.path.join(path or '.', 'record.json')}")
    return path


def refuse_self_verify(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """For a workload whose ``--verify`` reruns what ``--framework reference`` runs (the same code in one
    process): that pair would compare the run with itself, so it is refused (exit 2)."""
    if args.verify and args.framework == "reference":
        p.error("--verify compares a run with the single-process reference; --framework reference is that "
                "reference: drop --verify, or run --framework ray or torch")


def check_common_args(args: argparse.Namespace) -> None:
    """In every rank, before the input is read: ``--workers`` >= 1, and under torchrun the world it
    started is the worker count."""
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, not {args.workers}")
    if torchrun_env() and args.framework == "torch":
        args.workers = int(os.environ["WORLD_SIZE"])


def add_learning_args(p: argparse.ArgumentParser, workers: str = "data-parallel workers", each: str = "worker"
                      ) -> None:
    """The options every learning workload takes (its --framework and --input are its own); ``workers``
    and ``each``: what ``--workers`` counts in this workload, and one of them."""
    p.add_argument("--workers", type=int, default=1, help=f"{workers} (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads of each {each} (torch or xgboost), the same in every framework "
                        "(default: usable CPUs // workers)")
    add_output_arg(p)
    p.add_argument("--nodes", type=int, default=1, help="nodes the run spans (recorded; set by the orchestrator)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster instead of starting a local one (default: $RAY_ADDRESS)")
    p.add_argument("--storage", help="Ray storage_path (default: a temp dir; must be shared on a multi-node cluster)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run's random numbers (default 0)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop the run and fail it after this many seconds (torch: the local ranks; Ray: the Train "
                        "workers or Tune trials; default: no limit; --framework reference has no workers to "
                        "stop and ignores it)")
    p.add_argument("--run-id", help=argparse.SUPPRESS)  # set by `fab run-experiment`


def check_positive(**values: int | None) -> None:
    """A :class:`UserError` (a failed record, exit 2) naming the first option below 1."""
    if (wrong := below(1, values)) is not None:
        raise UserError(wrong)


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
    against its nodes instead (:func:`raylaunch.check_ray_cluster`)."""
    if args.threads is None:
        return default_threads(args.workers)
    cores = procs.usable_cpus()
    if args.threads > cores and not (args.framework == "ray" and args.address):
        raise UserError(f"--threads {args.threads} is more than the {cores} CPU(s) this machine lets the run use; "
                        f"use --threads {cores} or fewer")
    return args.threads
