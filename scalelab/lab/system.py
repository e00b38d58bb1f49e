"""What the lab does on this machine: run a command, wait for a condition, look at mounts and links,
and print the verbs' progress lines."""
from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

Progress = Callable[[str], None]


def echo(msg: str) -> None:
    """The verbs' progress lines, by default: printed at once."""
    print(msg, flush=True)


def sh(*args: str, check: bool = True, capture: bool = True, input: str | None = None,
       timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with the command and its stderr in one message."""
    proc = subprocess.run(list(args), text=True, capture_output=capture, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = err[-1] if err else f"exit {proc.returncode}"
        raise RuntimeError(f"`{shlex.join(args)}` failed: {tail}")
    return proc


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``cond`` until it holds; past ``timeout`` s a RuntimeError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (this process's mount table)."""
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def link_exists(name: str) -> bool:
    """Whether the network link ``name`` (a bridge, a veth end) exists."""
    return Path("/sys/class/net", name).exists()
