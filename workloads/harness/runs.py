"""A workload's main under the record/error contract (one line and exit 2 for a user error, a failed
record for any other, only the leader writes), and a graph workload's dispatch to its runtime."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workloads.comm import LocalComm, TorchComm
from workloads.graphio import InputInfo, inspect_input
from workloads.harness import Body, LaunchTimeout, torchrun_env
from workloads.harness.cli import check_common_args, output_replaces_input, wrong_seed, wrong_timeout
from workloads.harness.raylaunch import ray_ranks
from workloads.harness.torchlaunch import spawn_torch, torch_rank
from workloads.harness.track import since_launch
from workloads.record import (
    UserError,
    check_output,
    checked,
    fail_record,
    finish_record,
    launch_time,
    new_record,
    write_record,
)


def dataset_entry(info: InputInfo, name: str | None) -> dict[str, Any]:
    """The record's ``dataset``: ``--dataset`` or the file's stem, the input's URI and size."""
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
    """The line a graph run prints: its metrics (the top 3, not the whole top-k), its step times, and
    NOT CONVERGED where ``--max-iter`` stopped it."""
    m = rec["metrics"]
    keep = {k: v for k, v in m.items() if k not in ("top", "centroids", "peak_rss_gib")}  # (in the record)
    if "top" in m:
        keep["top"] = m["top"][:3]
    t = {k: round(v, 3) for k, v in rec["timings_s"].items() if isinstance(v, float)}
    late = " NOT CONVERGED: stopped at --max-iter" if m.get("converged") is False else ""
    return (f"{rec['workload']} {rec['framework']} workers={rec['workers']} nodes={rec['nodes']}: "
            f"{json.dumps(keep)} timings_s={json.dumps(t)}{late}")


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
        if 1 <= args.workers < args.nodes:  # the record would say so (a run spans at most a node per worker)
            raise UserError(f"--nodes {args.nodes} is more than --workers {args.workers}: a run spans at "
                            "most one node per worker")
        if leader and args.output:
            check_output(args.output)  # before the training, not after it
        return body(rec, t_start)

    def summary_and_verdict(rec: dict) -> str:  # (a failed verification is a result here, not an error)
        ver = rec.get("verification") or {}
        return summary(rec) + (f" NOT VERIFIED: {ver['reason']}" if ver.get("passed") is False else "")

    return conclude(rec, args, leader, work, summary_and_verdict)
