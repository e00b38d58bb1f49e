"""`make bench` (second part): the cost of one collective round, Ray against torch.

    .venv/bin/python -m bench.comm_bench                    # both runtimes, ranks on this machine

On a cluster, the Ray ranks one per node: copy this file to the master and run it there as the
cluster user (the nodes hold the workloads package; RAY_ADDRESS and the token come with the login
shell; the Ray port is closed to the controller):

    PYTHONPATH=/opt/scalelab/src SCALELAB_RAY_NODES=3 /opt/scalelab/venv/bin/python comm_bench.py \
        --framework ray --workers 3

PageRank gathers its vector once per iteration and k-means reduces its sums once per iteration, so a
round of ``Comm.block_gatherer`` (each rank's block to every rank, and a number summed) is what a
step costs beyond its compute.  Each rank gathers blocks of each size for ``--rounds`` rounds after a
few untimed ones; the slowest rank's mean is printed in milliseconds per round.  Arrays up to
``RayComm.INLINE_BYTES`` travel inside Ray's calls, larger ones through its object store.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workloads.comm import Comm, RayComm
from workloads.harness import raylaunch, torchlaunch

SIZES_KB = (8, 64, 640, 4000, 45000)  # up to data_1's blocks for 2 ranks (11.2 M nodes / 2, float64)
WARM_ROUNDS = 3


def time_rounds(comm: Comm, sizes_kb: tuple[int, ...], rounds: int) -> dict[str, float]:
    """Milliseconds per block-gather round of the slowest rank, for blocks of each size (every rank
    gets them); checks what arrived."""
    out = {}
    for kb in sizes_kb:
        n = kb * 1000 // 8
        gather = comm.block_gatherer([n] * comm.world, np.float64)
        block = np.full(n, float(comm.rank))
        for _ in range(WARM_ROUNDS):
            gather(block, 1.0)
        t0 = time.perf_counter()
        for _ in range(rounds):
            vector, total = gather(block, 1.0)
        out[str(kb)] = (time.perf_counter() - t0) / rounds * 1e3
        if vector[-1] != comm.world - 1 or total != comm.world:
            raise RuntimeError(f"rank {comm.rank}: a {kb} KB round gathered the wrong values")
    slowest = comm.allreduce(np.array(list(out.values())), "max")
    return dict(zip(out, slowest.tolist(), strict=True))


def ray_body(args: argparse.Namespace, info: object, rec: dict, comm: Comm) -> None:
    rec["ms_per_round"] = time_rounds(comm, args.sizes, args.rounds)


def torch_target(comm: Comm, sizes: tuple[int, ...], rounds: int, out: str) -> int:
    times = time_rounds(comm, sizes, rounds)
    if comm.rank == 0:
        Path(out).write_text(json.dumps(times))
    return 0


def run_ray(args: argparse.Namespace) -> dict[str, float]:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import bench/
    rec: dict = {"timings_s": {}}
    ns = argparse.Namespace(workers=args.workers, address=args.address, timeout=args.timeout,
                            launch_t=time.time(), sizes=args.sizes, rounds=args.rounds)
    raylaunch.ray_ranks(ray_body)(ns, None, rec, None)
    return rec["ms_per_round"]


def run_torch(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="scalelab-comm-") as tmp:
        out = Path(tmp) / "times.json"
        codes = torchlaunch.spawn_torch(args.workers, torchlaunch.torch_rank,
                                        (torch_target, (tuple(args.sizes), args.rounds, str(out))),
                                        timeout_s=args.timeout)
        if any(codes) or not out.exists():
            raise SystemExit(f"error: the torch ranks exited with codes {codes}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("ray", "torch", "both"), default="both")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_KB), help="block sizes in KB")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to run the Ray ranks on (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    frameworks = ("ray", "torch") if args.framework == "both" else (args.framework,)
    results = {}
    for fw in frameworks:
        print(f"{fw}: {args.workers} ranks, {args.rounds} rounds per size ...", flush=True)
        results[fw] = run_ray(args) if fw == "ray" else run_torch(args)
    where = {"ray": f"the Ray cluster at {args.address}" if args.address else "this machine",
             "torch": "this machine"}
    print(f"\nms per block-gather round (slowest rank), {args.workers} ranks; "
          + "; ".join(f"{fw} on {where[fw]}" for fw in frameworks)
          + f"; Ray sends arrays up to {RayComm.INLINE_BYTES >> 20} MiB inside its calls")
    print(f"{'block (KB)':>12}" + "".join(f"{fw:>10}" for fw in frameworks)
          + ("     ray/torch" if len(frameworks) == 2 else ""))
    for kb in args.sizes:
        row = [results[fw][str(kb)] for fw in frameworks]
        ratio = f"{row[0] / row[1]:13.2f}x" if len(row) == 2 else ""
        print(f"{kb:>12}" + "".join(f"{v:10.2f}" for v in row) + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
