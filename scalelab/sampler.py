"""Resource sampling on the nodes during a run: CPU and memory of every node, peak and mean.

:data:`SCRIPT` runs on a node under the system ``python3`` (sent over ssh on stdin, nothing to
install) and prints one JSON line per interval.  CPU is read from the cgroup (``cpu.stat``) so that a
container (a lab host) reports its own use, not the machine's; memory from ``memory.current`` less the
file cache (``memory.stat``) when the cgroup has them, else, in a container, its processes' private
resident pages plus what its tmpfs mounts hold (shared memory such as Ray's object store, once), else
``MemTotal - MemAvailable``: the memory in use, not the reclaimable cache.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

SCRIPT = r'''
import json, os, sys, time
def in_container():
    if os.path.exists("/run/systemd/container") or os.path.exists("/.dockerenv"):
        return True
    try:
        return b"container=" in open("/proc/1/environ", "rb").read()
    except OSError:
        return False
CONT = in_container()
PAGE = os.sysconf("SC_PAGE_SIZE")
def cpu_usec():
    try:
        for line in open("/sys/fs/cgroup/cpu.stat"):
            k, v = line.split()
            if k == "usage_usec":
                return int(v)
    except OSError:
        pass
    f = open("/proc/stat").readline().split()[1:]
    busy = sum(int(x) for i, x in enumerate(f[:8]) if i not in (3, 4))
    return busy * 1e6 / os.sysconf("SC_CLK_TCK")
def tmpfs_bytes(mounts="/proc/self/mounts"):
    # What this node's tmpfs mounts hold (/dev/shm: Ray's object store, torch's shared tensors; /tmp,
    # /run): resident memory that no process's private pages include.  Each file system once.
    seen, total = set(), 0
    for line in open(mounts):
        point, fstype = line.split()[1:3]
        if fstype != "tmpfs" or point.startswith(("/proc/", "/sys", "/run/host")) or (
                point.startswith("/dev") and point != "/dev/shm"):
            continue  # the container's view of the host's files, and the device nodes
        try:
            st, dev = os.statvfs(point), os.stat(point).st_dev
        except OSError:
            continue
        if dev not in seen:
            seen.add(dev)
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total
def mem_bytes(cgroup="/sys/fs/cgroup", proc="/proc"):
    # The cgroup's charge less its file cache (a lab host that read an 11 GB input holds it in cache,
    # which the kernel reclaims): what MemTotal - MemAvailable means on a VM.
    try:
        current = int(open(f"{cgroup}/memory.current").read())
        stat = dict(line.split() for line in open(f"{cgroup}/memory.stat"))
        return current - int(stat.get("active_file", 0)) - int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        pass
    if CONT:
        # Each process's resident pages less its shared ones (libraries, shared memory), which a sum over
        # processes would count once per process (~0.5 GB of torch each); the shared memory itself is
        # counted once, as the files of the node's tmpfs mounts.
        total = tmpfs_bytes()
        for pid in os.listdir(proc):
            if pid.isdigit():
                try:
                    resident, shared = open(f"{proc}/{pid}/statm").read().split()[1:3]
                    total += (int(resident) - int(shared)) * PAGE
                except (OSError, ValueError):
                    pass
        return total
    info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/meminfo")}
    return info["MemTotal"] - info["MemAvailable"]
if __name__ == "__main__":
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    last_c, last_t = cpu_usec(), time.monotonic()
    while True:
        time.sleep(interval)
        c, t = cpu_usec(), time.monotonic()
        pct = 100.0 * (c - last_c) / 1e6 / (t - last_t)
        last_c, last_t = c, t
        print(json.dumps({"cpu": round(pct, 1), "mem_mb": round(mem_bytes() / 2**20, 1)}), flush=True)
'''


@dataclass
class HostSamples:
    cpu: list[float] = field(default_factory=list)
    mem: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        def stats(xs: list[float]) -> tuple[float | None, float | None]:
            return (round(sum(xs) / len(xs), 1), round(max(xs), 1)) if xs else (None, None)
        cm, cp = stats(self.cpu)
        mm, mp = stats(self.mem)
        return {"cpu_mean": cm, "cpu_peak": cp, "mem_mean": mm, "mem_peak": mp, "samples": len(self.cpu)}


class Sampler:
    """One ssh per node streaming samples; :meth:`stop` ends those ssh processes (ours, by PID)."""

    def __init__(self, hosts: dict[str, list[str]], interval: float = 1.0):
        self.hosts = hosts  # name -> ssh argv (without the remote command)
        self.interval = interval
        self.samples = {h: HostSamples() for h in hosts}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> Sampler:
        for name, argv in self.hosts.items():
            p = subprocess.Popen([*argv, f"python3 -u - {self.interval}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert p.stdin is not None
            p.stdin.write(SCRIPT)
            p.stdin.close()
            self._procs[name] = p
            t = threading.Thread(target=self._read, args=(name, p), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, name: str, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.samples[name].cpu.append(float(d["cpu"]))
            self.samples[name].mem.append(float(d["mem_mb"]))

    def latest(self) -> dict[str, tuple[float, float]]:
        return {h: (s.cpu[-1], s.mem[-1]) for h, s in self.samples.items() if s.cpu}

    def stop(self) -> dict[str, dict]:
        for p in self._procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self._procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:
            t.join(timeout=2)
        return {h: s.summary() for h, s in self.samples.items()}
