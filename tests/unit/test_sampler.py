"""The node resource sampler, run here through `sh -c` instead of ssh (the same script and parsing)."""
from __future__ import annotations

import time

from scalelab.sampler import Sampler


def test_sampler_reports_cpu_and_memory_and_stops() -> None:
    s = Sampler({"local": ["sh", "-c"]}, interval=0.2).start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:   # keep one core busy so the CPU figure is not zero
        sum(i * i for i in range(20000))
    summary = s.stop()["local"]
    assert summary["samples"] >= 3
    assert summary["cpu_peak"] >= summary["cpu_mean"] > 0
    assert summary["mem_peak"] >= summary["mem_mean"] > 0
    assert all(p.poll() is not None for p in s._procs.values())


def _script() -> dict:
    """The node script's functions (its loop runs only as a program)."""
    from scalelab.sampler import SCRIPT
    ns: dict = {"__name__": "scalelab_sampler_script"}
    exec(compile(SCRIPT, "sampler-script", "exec"), ns)  # noqa: S102 -- our own script, as the node runs it
    return ns


def test_a_cgroup_s_memory_leaves_out_its_file_cache(tmp_path) -> None:
    (tmp_path / "memory.current").write_text(f"{12 * 2**30}\n")
    (tmp_path / "memory.stat").write_text(f"anon {3 * 2**30}\nactive_file {2 * 2**30}\ninactive_file {7 * 2**30}\n"
                                          f"shmem {2**20}\n")
    assert _script()["mem_bytes"](cgroup=str(tmp_path)) == 3 * 2**30


def test_a_container_s_processes_count_their_own_pages_not_the_shared_ones(tmp_path) -> None:
    ns = _script()
    ns["CONT"] = True
    page = ns["PAGE"]
    for pid, (resident, shared) in {"1": (300, 100), "42": (1000, 900)}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "statm").write_text(f"5000 {resident} {shared} 10 0 400 0\n")
    (tmp_path / "self").mkdir()  # not a process directory of its own
    (tmp_path / "77").mkdir()    # a process that exited while we read: no statm
    ns["tmpfs_bytes"] = lambda: 7 * page  # the node's shared memory, once
    assert ns["mem_bytes"](cgroup=str(tmp_path / "none"), proc=str(tmp_path)) == (300 + 7) * page


class _FileSystems:
    """`os` as the sampler's tmpfs_bytes sees it, over a table of mount points: path -> (device, used
    bytes).  Each mount point has its own size, so every file system wrongly counted shows in the sum."""

    def __init__(self, table: dict[str, tuple[int, int]]) -> None:
        self.table = table

    def statvfs(self, path: str):
        from types import SimpleNamespace
        if path not in self.table:
            raise FileNotFoundError(path)
        return SimpleNamespace(f_blocks=self.table[path][1] + 5, f_bfree=5, f_frsize=1)

    def stat(self, path: str):
        from types import SimpleNamespace
        if path not in self.table:
            raise FileNotFoundError(path)
        return SimpleNamespace(st_dev=self.table[path][0])


def test_shared_memory_counts_once_per_file_system_and_the_host_s_views_not_at_all(tmp_path) -> None:
    """Ray's object store lives in /dev/shm: left out of every process's private pages, so the node
    total must add each of its tmpfs file systems once (/tmp bind-mounted from /dev/shm's file system
    too), and none of the files the container sees of its host (under /proc, /sys, /run/host), its
    device nodes (/dev), a disk, or a mount point that is gone."""
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /dev/shm tmpfs rw 0 0\n"
                      "tmpfs /run tmpfs rw 0 0\n"
                      "tmpfs /tmp tmpfs rw 0 0\n"                   # /dev/shm's file system again
                      "/dev/vda /srv ext4 rw 0 0\n"
                      "tmpfs /proc/kmsg tmpfs rw 0 0\n"
                      "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n"
                      "tmpfs /run/host/incoming tmpfs ro 0 0\n"
                      "tmpfs /dev tmpfs rw 0 0\n"
                      "tmpfs /no/such/mount tmpfs rw 0 0\n")
    ns = _script()
    ns["os"] = _FileSystems({"/dev/shm": (1, 100), "/run": (2, 20), "/tmp": (1, 100), "/srv": (3, 10**3),
                             "/proc/kmsg": (4, 10**4), "/sys/fs/cgroup": (5, 10**5),
                             "/run/host/incoming": (6, 10**6), "/dev": (7, 10**7)})
    assert ns["tmpfs_bytes"](str(mounts)) == 120


def test_shared_memory_of_this_machine_is_read(tmp_path) -> None:
    """The same function over this machine's real mount table: a number, not an error."""
    assert _script()["tmpfs_bytes"]() >= 0
