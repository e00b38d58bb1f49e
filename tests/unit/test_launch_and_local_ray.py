"""When a run counts from (the same span in every runtime), and the environment of a Ray we start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workloads import harness, procs, record
from workloads.comm import Comm, LocalComm, RayComm
from workloads.harness import raylaunch, torchlaunch


def test_process_start_time_is_this_process_start():
    started = record.process_start_time()
    assert started is not None
    ps = subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True)
    assert abs((time.time() - started) - int(ps.stdout)) <= 1.5
    assert record.process_start_time(2**22 + 12345) is None  # no such process


def test_launch_time_as_a_library_is_now(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert abs(record.launch_time() - time.time()) < 0.5  # pytest started long ago: not counted


def test_launch_time_in_a_torchrun_rank_is_its_agent_start(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert record.launch_time() == pytest.approx(record.process_start_time(os.getppid()), abs=0.02)


def test_a_workload_run_as_a_program_counts_its_interpreter_start():
    code = ("import time; t = time.time(); time.sleep(1.0); "
            "from workloads import record; "
            "print(record.run_main(lambda argv: print(t - record.launch_time()) or 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=harness.REPO_ROOT, env={**os.environ, "PYTHONPATH": harness.REPO_ROOT}).stdout.split()
    assert 0.0 < float(out[0]) < 5.0 and out[1] == "0"  # the start was before the script's first line


CONNECT_RETRY = ("RAY_raylet_client_connect_timeout_milliseconds", "RAY_raylet_client_num_connect_attempts")


def test_local_ray_env_turns_token_auth_on_with_a_fresh_token(monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_worker_niceness", *CONNECT_RETRY):
        monkeypatch.delenv(var, raising=False)
    raylaunch.local_ray_env()
    first = os.environ["RAY_AUTH_TOKEN"]
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(first) == 64
    assert os.environ["RAY_worker_niceness"] == "0"
    # a socket not listening yet is tried again after 0.1 s, not Ray's 1 s, as long in all (10 s)
    assert [os.environ[v] for v in CONNECT_RETRY] == ["100", "100"]
    monkeypatch.delenv("RAY_AUTH_MODE")
    raylaunch.local_ray_env()
    assert os.environ["RAY_AUTH_TOKEN"] != first


def test_local_ray_env_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "15")
    for var in CONNECT_RETRY:
        monkeypatch.setenv(var, "7")
    raylaunch.local_ray_env()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ
    assert os.environ["RAY_worker_niceness"] == "15"
    assert [os.environ[v] for v in CONNECT_RETRY] == ["7", "7"]


# ------------------------------------------------------------------ the harness's communication
class TwoRanks(Comm):
    """The generic collectives over a fixed peer: rank 0 of two, the other rank's arrays given."""

    world = 2

    def __init__(self, peer: list) -> None:
        self.peer = iter(peer)

    def allgather(self, a):
        return [a, next(self.peer)]


def test_comm_reduces_in_rank_order_and_gathers_blocks_into_one_vector():
    import numpy as np

    comm = TwoRanks([np.array([5, 1]), np.array([2.0]), np.array([0.5]), np.array([3.0]), np.array([0.25])])
    assert comm.allreduce(np.array([1, 4]), "max").tolist() == [5, 4]
    gather = comm.block_gatherer([1, 1], np.float64)
    first, s1 = gather(np.array([1.0]), 0.125)
    assert first.tolist() == [1.0, 2.0]
    second, s2 = gather(np.array([4.0]), 1.0)
    assert second is first and second.tolist() == [4.0, 3.0]  # one n-long vector, refilled
    assert (s1, s2) == (0.625, 1.25)


def alltoall_on_this_rank(comm) -> int:
    """Rank r sends ``r * 10 + d`` to rank d; the sent list must be empty once the runtime holds it (a
    rank must not keep its sends beside what it receives: the graph's arcs cross here)."""
    import numpy as np

    # Ray: the pieces for rank 0 cross in three parts of at most RayComm.PART_BYTES, two through the object
    # store and the last inside the calls; the others in one part inside the calls
    part = RayComm.PART_BYTES // 8
    n = [2 * part + 3 if dest == 0 else 1000 for dest in range(comm.world)]
    pieces = [np.arange(n[dest], dtype=np.int64) * 100 + comm.rank * 10 + dest for dest in range(comm.world)]
    got = comm.alltoall(pieces)
    assert pieces == [], f"rank {comm.rank} still holds {len(pieces)} sent pieces"
    for src, a in enumerate(got):
        want = np.arange(n[comm.rank], dtype=np.int64) * 100 + src * 10 + comm.rank
        assert a.dtype == np.int64 and np.array_equal(a, want), f"rank {comm.rank}, from {src}"
    return 0


def gather_blocks_on_this_rank(comm) -> int:
    """Blocks of unequal sizes (one empty, one above RayComm.PART_BYTES: Ray sends it in two parts, the
    first through the object store, the rest inside its calls) land in rank order with the sum of the
    ranks' values, each call into the same vector; arrays above a part are all-gathered and reduced."""
    import numpy as np

    sizes = [2, 0, RayComm.PART_BYTES // 8 + 1000][:comm.world]
    mine = sum(sizes[:comm.rank])
    gather = comm.block_gatherer(sizes, np.float64)
    n = sum(sizes)
    first, s1 = gather(np.arange(mine, mine + sizes[comm.rank], dtype=np.float64), 2.0 ** comm.rank)
    assert first.tolist() == list(range(n)), f"rank {comm.rank}: {first[:5].tolist()}"
    second, s2 = gather(-np.arange(mine, mine + sizes[comm.rank], dtype=np.float64), 0.5)
    assert second is first, f"rank {comm.rank}: a second n-long vector"
    assert second.tolist() == [-float(i) for i in range(n)], f"rank {comm.rank}: {second[:5].tolist()}"
    assert (s1, s2) == (2.0 ** comm.world - 1, 0.5 * comm.world), f"rank {comm.rank}: {s1}, {s2}"
    # arrays above a part (Ray: in several rounds) gathered and reduced whole, in rank order
    big = RayComm.PART_BYTES // 8 + 1000
    lengths = [big, 3, 2 * big + 7][:comm.world]
    got = comm.allgather(np.arange(lengths[comm.rank], dtype=np.int64) + 10 * comm.rank)
    for r, g in enumerate(got):
        assert np.array_equal(g, np.arange(lengths[r]) + 10 * r), f"rank {comm.rank}: allgather from {r}"
    del got
    total = comm.allreduce(np.arange(big, dtype=np.int64) * (comm.rank + 1))
    assert np.array_equal(total, np.arange(big) * (comm.world * (comm.world + 1) // 2)), f"rank {comm.rank}: sum"
    top = comm.allreduce(np.arange(big, dtype=np.int64) * (comm.rank + 1), "max")
    assert np.array_equal(top, np.arange(big) * comm.world), f"rank {comm.rank}: max"
    return 0


def gather_body(args, info, rec, comm) -> None:
    gather_blocks_on_this_rank(comm)
    rec["ranks"] = comm.world


@pytest.mark.slow
def test_torch_block_gatherer_puts_unequal_blocks_in_rank_order():
    assert torchlaunch.spawn_torch(3, torchlaunch.torch_rank, (gather_blocks_on_this_rank, ()), timeout_s=300) == [0, 0, 0]


def run_ray_ranks(body, workers: int) -> tuple[dict, float]:
    """``body`` on ``workers`` Ray ranks of a local Ray, as a run's driver does; (rank 0's record,
    seconds from the launch to the driver's return, Ray's teardown included)."""
    import argparse

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    try:
        rec: dict = {"timings_s": {}}
        args = argparse.Namespace(workers=workers, address=None, timeout=300, launch_t=time.time())
        raylaunch.ray_ranks(body)(args, None, rec, None)
        return rec, time.time() - args.launch_t
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("workers, nodes, cpus, message", [
    (2, 2, [1, 1], None),
    (3, 2, [2, 4, 1], None),
    (2, 2, [4], "2 workers on 2 distinct nodes need 1 CPU(s) on each, but 1 of the Ray cluster's 1 node(s) have that "
                "(4 CPUs); run on 1 node(s) or add nodes"),
    (6, 3, [2, 1, 2], "6 workers on 3 distinct nodes need 2 CPU(s) on each, but 2 of the Ray cluster's 3 node(s) have "
                      "that (2+1+2 CPUs); run on 2 node(s) or add nodes"),
    (4, 2, [1, 1], "4 workers on 2 distinct nodes need 2 CPU(s) on each, but 0 of the Ray cluster's 2 node(s) have "
                   "that (1+1 CPUs); add nodes"),
])
def test_a_placement_on_n_distinct_nodes_must_fit(workers, nodes, cpus, message):
    """SCALELAB_RAY_NODES=N: a STRICT_SPREAD group of N bundles of ceil(workers / N) CPUs, one per node."""
    assert raylaunch.placement_fit_error(workers, nodes, cpus) == message


def never_runs(args, info, rec, comm) -> None:
    raise AssertionError("the ranks started on a cluster that cannot place them")


@pytest.mark.slow
def test_ranks_asked_on_more_nodes_than_the_cluster_has_stop_at_once(monkeypatch):
    """The placement group used to wait PLACEMENT_TIMEOUT_S (60 s) for a node that is not there."""
    monkeypatch.setenv("SCALELAB_RAY_NODES", "2")
    started = time.monotonic()
    with pytest.raises(record.UserError, match=r"^2 workers on 2 distinct nodes need 1 CPU\(s\) on each, but 1 of the "
                                              r"Ray cluster's 1 node\(s\) have that \(2 CPUs\); run on 1 node"):
        run_ray_ranks(never_runs, 2)
    assert time.monotonic() - started < raylaunch.PLACEMENT_TIMEOUT_S


@pytest.mark.slow
def test_ray_block_gatherer_puts_unequal_blocks_in_rank_order():
    rec, _ = run_ray_ranks(gather_body, 3)
    assert rec["ranks"] == 3


def alltoall_body(args, info, rec, comm) -> None:
    alltoall_on_this_rank(comm)
    rec["ranks"] = comm.world


@pytest.mark.slow
def test_torch_alltoall_delivers_every_piece_and_empties_the_senders_list():
    assert torchlaunch.spawn_torch(2, torchlaunch.torch_rank, (alltoall_on_this_rank, ()), timeout_s=300) == [0, 0]


@pytest.mark.slow
def test_ray_alltoall_delivers_every_piece_and_empties_the_senders_list():
    rec, ended = run_ray_ranks(alltoall_body, 2)
    assert rec["ranks"] == 2
    # the run ends when every rank is done: Ray's teardown after it (~1.5 s here) is not in the total
    assert 0 < rec["timings_s"]["total"] < ended


def silent_peer_body(args, info, rec, comm) -> None:
    """Rank 0 waits (2 s at most) in a collective that rank 1 never joins."""
    import numpy as np

    if comm.rank == 0:
        comm.timeout_s = 2
        comm.allgather(np.arange(3))
    else:
        time.sleep(240)


@pytest.mark.slow
def test_a_ray_collective_whose_peer_sends_nothing_fails_instead_of_waiting_forever():
    import ray

    with pytest.raises(ray.exceptions.RayTaskError, match=r"rank 0: nothing from rank\(s\) \[1\] in collective "
                                                          r"round 1 within 2 s"):
        run_ray_ranks(silent_peer_body, 2)


def test_guard_raises_a_peers_user_error_on_every_rank_sent_as_text_not_a_pickle():
    import json

    import numpy as np

    peer = np.frombuffer(json.dumps(["user", "bad line 7"]).encode(), dtype=np.uint8)
    with pytest.raises(record.UserError, match="^bad line 7$"):
        TwoRanks([peer]).guard(lambda: 1)
    assert TwoRanks([np.empty(0, np.uint8)]).guard(lambda: 41 + 1) == 42
    assert LocalComm().hosts() == [os.uname().nodename]


def test_a_hung_local_launch_times_out_and_its_ranks_are_stopped():
    t0 = time.monotonic()
    with pytest.raises(harness.LaunchTimeout, match="did not finish within 2 s"):
        torchlaunch.spawn_torch(2, time.sleep, (120,), timeout_s=2)
    assert time.monotonic() - t0 < 60


SLEEPING_LAUNCH = ("import sys, time; from workloads import record; from workloads.harness import torchlaunch; "
                   "sys.exit(record.run_main(lambda argv: torchlaunch.spawn_torch(2, time.sleep, (240,)) and 0))")


def rank_pids(parent: int) -> list[int]:
    return [pid for pid in procs.children(parent)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.parametrize("to, sig", [("group", signal.SIGINT), ("parent", signal.SIGINT), ("parent", signal.SIGKILL)],
                         ids=["ctrl-c", "sigint-to-the-launch", "kill-9-the-launch"])
def test_a_local_torch_launch_stopped_takes_its_ranks_with_it(to, sig):
    """Ctrl-C (SIGINT to the terminal's process group) gives one line, no rank's traceback; SIGINT to
    the launching process alone stops its ranks instead of waiting for them; a launch killed outright
    leaves no rank running (they die with their parent)."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEPING_LAUNCH], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=harness.REPO_ROOT, env={**os.environ, "PYTHONPATH": harness.REPO_ROOT},
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(ranks) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            ranks = rank_pids(proc.pid)
        assert len(ranks) == 2, "the launch did not start its two ranks"  # (at once: still importing is fine)
        (os.killpg if to == "group" else os.kill)(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while any(alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [r for r in ranks if alive(r)], "a rank outlived its launch"
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and err == "error: interrupted\n", err[-2000:]
    finally:
        proc.kill()
        proc.wait()
        for r in ranks:
            if alive(r) and b"spawn_main" in Path(f"/proc/{r}/cmdline").read_bytes():
                os.kill(r, signal.SIGKILL)


def test_the_torch_rendezvous_store_listens_on_the_master_address_only():
    """Rank 0 hosts the store on MASTER_ADDR (127.0.0.1 locally), not on every interface."""
    port = harness.free_port()
    code = ("from workloads.harness import torchlaunch; torchlaunch.init_torch(); "
            "print('TCP'); print(open('/proc/net/tcp').read())")
    env = {**os.environ, "PYTHONPATH": harness.REPO_ROOT, "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env.pop("TORCHELASTIC_RUN_ID", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=harness.REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line.split() for line in out.stdout.split("TCP\n", 1)[1].splitlines()[1:] if line.strip()]
    listening = [cols[1] for cols in table if cols[3] == "0A"]
    mine = [addr for addr in listening if int(addr.split(":")[1], 16) == port]
    assert mine == [f"0100007F:{port:04X}"], listening  # 127.0.0.1 in /proc's little-endian hex



LINGERING_ACTOR = """
import os, sys, threading, time
import ray
from workloads import procs
from workloads.harness import raylaunch

@ray.remote(num_cpus=1)
class Lingering:
    def pid(self):
        threading.Thread(target=threading.Event().wait).start()  # not a daemon: the interpreter waits for it
        return os.getpid()

    def leave(self):
        ray.actor.exit_actor()  # a graceful exit: Ray lets the process go, Python stays for the thread

def main():
    actor = Lingering.remote()
    pid = ray.get(actor.pid.remote())
    try:
        ray.get(actor.leave.remote())
    except ray.exceptions.RayActorError:  # how a caller sees the actor leave
        pass
    time.sleep(1)
    print(pid, "left-behind" if procs.start_time(pid) else "ended", flush=True)  # before this process's Ray ends

if sys.argv[1] == "session":
    with raylaunch.ray_session(1, None):
        main()
else:  # as the learning workloads do: Ray left to the exit
    raylaunch.ray_connect(None, 1, train=False)
    main()
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for PID 1 to reap it."""
    return procs.start_time(pid) is not None


@pytest.mark.slow
@pytest.mark.parametrize("ends", ["session", "exit"])
def test_a_local_ray_ends_its_workers_that_ray_let_go_but_did_not_exit(ends):
    """An actor that leaves gracefully with a non-daemon thread running (as Ray Train's controller now
    and then does) is ended with the Ray that this process started, not left behind to PID 1."""
    proc = subprocess.run([sys.executable, "-c", LINGERING_ACTOR, ends], capture_output=True, text=True,
                          timeout=120, cwd=harness.REPO_ROOT, env={**os.environ, "PYTHONPATH": harness.REPO_ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pid, before = proc.stdout.split()[:2]
    pid = int(pid)
    assert before == "left-behind", "the actor's process ended by itself: nothing to check"
    try:
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid), f"the actor's process {pid} outlived its Ray"
    finally:
        if alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::Lingering"):
            os.kill(pid, signal.SIGKILL)


def test_joining_checks_only_a_host_port_address_and_at_once():
    for address in ("auto", "ray://head:10001", "::1", "fe80::1"):  # Ray's to resolve (no port of their own here)
        raylaunch.check_reachable(address)
    for address in (f"127.0.0.1:{harness.free_port()}", f"[::1]:{harness.free_port()}"):
        with pytest.raises(record.UserError, match=r"^cannot join the Ray cluster at .*: nothing answers there \("):
            raylaunch.check_reachable(address)


def test_a_checkout_on_the_venvs_path_through_a_pth_file_is_recognised(tmp_path, monkeypatch):
    """What decides whether a driver that joins a cluster sends its source path as a runtime_env."""
    import site

    src = tmp_path / "srv" / "scalelab"
    src.mkdir(parents=True)
    sp = tmp_path / "site-packages"
    sp.mkdir()
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(sp)])
    (sp / "other.pth").write_text(f"# {src}\nimport sys; sys.path.append({str(src)!r})\n{tmp_path}\n")
    assert not raylaunch.on_site_path(str(src))  # a comment, an import line, another directory
    (sp / "scalelab-src.pth").write_text(f"{src}\n")  # python_env's file: the absolute path
    assert raylaunch.on_site_path(str(src)) and raylaunch.on_site_path(f"{src}/")
    (sp / "scalelab-src.pth").write_text("../srv/scalelab\n")  # a relative line counts from site-packages
    assert raylaunch.on_site_path(str(src))
    assert not raylaunch.on_site_path(str(tmp_path / "srv"))
