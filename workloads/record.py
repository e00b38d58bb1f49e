"""The result record: one JSON file per run, checked against the model in :mod:`workloads.recordmodel`
(docs/record.schema.json).

Every workload builds its record with :func:`new_record`, fills ``metrics`` / ``timings_s`` /
``verification``, and writes it with :func:`write_record`, which checks it first.  A failed run is
written with :func:`fail_record` and never carries ``status: ok``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

from workloads import procs

SCHEMA = 2  # 2: strict JSON (non-finite numbers are null); recordmodel.UPGRADES reads 1
FRAMEWORKS = ("ray", "torch", "reference")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(hosts: list[str] | None = None) -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    return {
        "python": platform.python_version(),
        "ray": _version("ray"),
        "torch": _version("torch"),
        "hosts": hosts or [socket.gethostname()],
        "cpus_per_node": procs.usable_cpus(),
    }


def new_record(workload: str, framework: str, *, workers: int, nodes: int = 1,
               params: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
               run_id: str | None = None) -> dict[str, Any]:
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, not {framework!r}")
    return {
        "schema": SCHEMA,
        "run_id": run_id or f"{workload}-{framework}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}",
        "workload": workload,
        "framework": framework,
        "nodes": int(nodes),
        "workers": int(workers),
        "status": "failed",  # becomes "ok" only through finish_record()
        "error": None,
        "dataset": dataset or {"name": None, "uri": None, "bytes": None, "records": None},
        "params": dict(params or {}),
        "timings_s": {},
        "metrics": {},
        "verification": None,
        "env": environment(),
        "started_at": _now(),
        "finished_at": None,
    }


def finish_record(rec: dict[str, Any]) -> dict[str, Any]:
    rec["status"] = "ok"
    rec["error"] = None
    rec["finished_at"] = _now()
    return rec


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and the like (Ray colours a task's error)


def fail_record(rec: dict[str, Any], error: BaseException | str) -> dict[str, Any]:
    rec["status"] = "failed"
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    rec["error"] = _TERMINAL_CODES.sub("", text)
    rec["finished_at"] = _now()
    return rec


def checked(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` as plain JSON values (numpy numbers converted; Infinity and NaN, which are not JSON, as
    null), checked against the model: raises recordmodel.BadRecord with one line."""
    from workloads.recordmodel import check  # pydantic is imported when a record is checked, not at start-up

    data = json.loads(json.dumps(rec, default=_jsonable), parse_constant=lambda c: None)
    return check(data, "the record to write")


def write_record(rec: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`checked` ``rec`` with :func:`write_atomic` (an invalid record: nothing is written)."""
    return write_json(checked(rec), path)


def write_json(doc: Any, path: str | os.PathLike[str], what: str = "the record") -> Path:
    """Any JSON document (a record, a rank's result), written with :func:`write_atomic`."""
    data = json.dumps(doc, indent=2, default=_jsonable) + "\n"
    return write_atomic(path, data.encode(), what)


def write_atomic(path: str | os.PathLike[str], data: bytes, what: str = "the record") -> Path:
    """Write atomically and durably: temp file, fsync, rename, fsync of the directory, so a crash
    never leaves half a file.  A path that cannot be written raises UserError and leaves no temp file."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        _prepare_target(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise UserError(_unwritable(path, exc, what)) from None
    _fsync_dir(path.parent)
    return path


def check_output(path: str | os.PathLike[str]) -> None:
    """Fail at once, in one line, where :func:`write_record` could not write ``path`` (before any work)."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        _prepare_target(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise UserError(_unwritable(path, exc)) from None
    finally:
        _remove(tmp)


def _prepare_target(path: Path) -> None:
    """Raise OSError where ``path`` is not a file the rename can replace (a directory; a device, pipe
    or socket, which the rename would replace by a file: ``/dev/null`` as root); make its directory."""
    if path.is_dir():
        raise IsADirectoryError(21, "it is a directory")
    if path.exists() and not path.is_file():
        raise OSError("it is not a regular file (a device, pipe or socket)")
    path.parent.mkdir(parents=True, exist_ok=True)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _unwritable(path: Path, exc: OSError, what: str = "the record") -> str:
    why = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError) and path.is_dir():
        example = path / ("record.json" if what == "the record" else f"out{path.suffix or '.json'}")
        return f"cannot write {what} to {path}: it is a directory; name a file, e.g. {example}"
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir says "file exists" for a file in the way
        why = f"{blocker} is not a directory"
    return f"cannot write {what} to {path}: {why.lower()}; name a file in a directory you can write"


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; a file system that cannot fsync a directory has nothing more to do."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(obj: Any) -> Any:
    # numpy scalars/arrays without importing numpy here
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_AS_PROGRAM = False  # set by run_main(): this process was started to run the workload


def process_start_time(pid: int | str = "self") -> float | None:
    """Wall-clock start of a process (Linux /proc, 10 ms resolution); None where it cannot be read.

    /proc gives the start in clock ticks since boot; it is mapped to wall-clock time through
    CLOCK_BOOTTIME now, so a clock stepped since boot does not shift it.
    """
    fields = procs.stat(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[19])  # field 22, starttime
        since = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since
    except (ValueError, IndexError, AttributeError, OSError):
        return None


def launch_time() -> float:
    """When this run was launched, so that ``startup`` and ``total`` cover the same span in every
    runtime: interpreter start, imports, and spawning or joining the workers.

    In a torchrun rank, the start of its parent (the elastic agent, started by the launcher on this
    node); in a workload started as a program (:func:`run_main`), the start of this process; called
    as a library, now.
    """
    started = None
    if "TORCHELASTIC_RUN_ID" in os.environ:
        started = process_start_time(os.getppid())
    elif _AS_PROGRAM:
        started = process_start_time()
    now = time.time()
    return min(started, now) if started is not None else now


@contextmanager
def timer(timings: dict[str, float], key: str, peaks: dict[str, int] | None = None) -> Iterator[None]:
    """Add the block's seconds to ``timings[key]``; with ``peaks``, also the block's :func:`phase_peak`."""
    t0 = time.perf_counter()
    try:
        with phase_peak(peaks, key) if peaks is not None else nullcontext():
            yield
    finally:
        timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0)


@contextmanager
def phase_peak(peaks: dict[str, int], key: str) -> Iterator[None]:
    """``peaks[key]`` = this process's largest resident size during the block, in bytes (-1 where the
    mark cannot be restarted).  Such blocks do not nest: each restarts the mark."""
    fresh = reset_peak_rss()
    try:
        yield
    finally:
        peaks[key] = peak_rss() if fresh else -1


def reset_peak_rss() -> bool:
    """Start this process's resident high-water mark (Linux's VmHWM) again from its present size (Linux
    4.0+: ``5`` into its own ``clear_refs``); False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's resident high-water mark (VmHWM) in bytes, since its start or the last
    :func:`reset_peak_rss`: resident pages of every kind, a memory-mapped input's included.  -1 if
    unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) << 10  # kB
    except OSError:
        pass
    return -1


class UserError(Exception):
    """An error the user can fix: printed as one line, no traceback, exit code 2."""


def run_main(main, argv: list[str] | None = None) -> int:
    """Run a workload's main(argv) -> int, turning UserError into one line on stderr."""
    global _AS_PROGRAM
    _AS_PROGRAM = True
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
