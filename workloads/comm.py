"""The workloads' one communication interface: :class:`Comm` (a rank, the world size and collectives on
numpy arrays) and its three implementations, :class:`LocalComm` (one process), :class:`TorchComm`
(torch.distributed's gloo) and :class:`RayComm` (Ray actors calling each other).  A workload's body
sees only a ``Comm``; :mod:`workloads.harness` launches the ranks and hands each its own.
"""
from __future__ import annotations

import json
import socket
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from workloads.record import UserError

Gatherer = Callable[[np.ndarray, float], tuple[np.ndarray, float]]  # Comm.block_gatherer's gather

OPS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "bor": np.bitwise_or}
COLLECTIVE_TIMEOUT_S = 600  # a collective whose peer sends nothing this long fails (gloo's timeout, RayComm's wait)


class Comm:
    """What a workload's body sees of the runtime: its rank, the world size and collectives on numpy
    arrays.  Only arrays cross between workers (never pickles: a peer's bytes are data, not code).

    Subclasses give :meth:`allgather` and may override the others with a faster form:
    :class:`LocalComm` (one process), :class:`TorchComm` (gloo), :class:`RayComm` (actor calls).
    """

    rank = 0
    world = 1

    def allgather(self, a: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (lengths may differ; one dtype), in rank order."""
        raise NotImplementedError

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        """``op`` (sum, max, min, bor) over every rank's array, applied in rank order (a fresh array)."""
        parts = self.allgather(np.asarray(a).ravel())
        out = np.array(parts[0], copy=True)
        for other in parts[1:]:
            OPS[op](out, other, out=out)
        return out.reshape(np.shape(a))

    def alltoall(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """``pieces[r]`` goes to rank r; returns what every rank sent here, in rank order.

        ``pieces`` is emptied once they are handed to the runtime, so the caller's list is not one
        more copy of the sends beside the runtime's and what arrives (the graph's arcs, the largest
        arrays of a run, cross here).
        """
        raise NotImplementedError

    def block_gatherer(self, sizes: Sequence[int], dtype: Any) -> Gatherer:
        """A repeated all-gather of blocks of fixed ``sizes`` (rank order) into one vector, with the sum
        of one number per rank beside it (rank order, as :meth:`allreduce`): ``gather(block, value) ->
        (vector, total)``.  Every call fills the same vector (an n-long vector is memory on every rank):
        a caller copies what it needs of the previous one before the next call."""
        out = self.vector(sizes, dtype)

        def gather(block: np.ndarray, value: float) -> tuple[np.ndarray, float]:
            np.concatenate(self.allgather(block), out=out)
            return out, float(self.allreduce(np.array([value], dtype=np.float64))[0])

        return gather

    @staticmethod
    def vector(sizes: Sequence[int], dtype: Any) -> np.ndarray:
        """The vector a block gatherer fills."""
        return np.empty(int(sum(sizes)), dtype=dtype)

    def guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one phase on every rank; if any rank failed, all raise the same error (no rank blocks)."""
        result, err = None, None
        try:
            result = fn(*args)
        except UserError as exc:
            err = ["user", str(exc)]
        except Exception as exc:
            err = ["bug", f"rank {self.rank}: {type(exc).__name__}: {exc}"]
            traceback.print_exc()
        errors = [e for e in self.allgather_text(json.dumps(err) if err else "") if e]
        if errors:
            kind, msg = json.loads(errors[0])
            raise UserError(msg) if kind == "user" else RuntimeError(msg)
        return result

    def allgather_text(self, text: str) -> list[str]:
        """Every rank's string, sent as UTF-8 bytes."""
        raw = np.frombuffer(text.encode(), dtype=np.uint8)
        return [bytes(b).decode("utf-8", "replace") for b in self.allgather(raw)]

    def hosts(self) -> list[str]:
        return sorted(set(self.allgather_text(socket.gethostname())))


class LocalComm(Comm):
    """One process, no runtime: the collectives of a world of one."""

    def allgather(self, a: np.ndarray) -> list[np.ndarray]:
        return [a]

    def alltoall(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        out = pieces[:]
        pieces.clear()
        return out


class TorchComm(Comm):
    """gloo collectives, numpy in and out (zero-copy where torch allows)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def _t(self, a: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        t = self._t(np.array(a, copy=True))
        self.dist.all_reduce(t, op={"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX,
                                    "min": self.dist.ReduceOp.MIN, "bor": self.dist.ReduceOp.BOR}[op])
        return t.numpy()

    def allgather(self, a: np.ndarray) -> list[np.ndarray]:
        """Gather arrays of different lengths from every rank (padded to the longest)."""
        sizes = self.allreduce(np.eye(self.world, dtype=np.int64)[self.rank] * len(a))
        longest = int(sizes.max())
        buf = np.zeros(longest, dtype=a.dtype)
        buf[:len(a)] = a
        out = [self._t(np.empty(longest, dtype=a.dtype)) for _ in range(self.world)]
        self.dist.all_gather(out, self._t(buf))
        return [o.numpy()[:s] for o, s in zip(out, sizes.tolist(), strict=True)]

    def alltoall(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """One all_to_all_single with split sizes: no padding, one send and one receive buffer."""
        import torch

        sizes = np.zeros((self.world, self.world), dtype=np.int64)
        sizes[self.rank] = [len(p) for p in pieces]
        sizes = self.allreduce(sizes)
        recv_sizes = sizes[:, self.rank].tolist()
        send = self._t(np.concatenate(pieces))
        pieces.clear()
        recv = torch.empty(sum(recv_sizes), dtype=send.dtype)
        self.dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes,
                                    input_split_sizes=sizes[self.rank].tolist())
        return np.split(recv.numpy(), np.cumsum(recv_sizes)[:-1])

    def block_gatherer(self, sizes: Sequence[int], dtype: Any) -> Gatherer:
        """As :meth:`Comm.block_gatherer`: one ``all_to_all_single`` that sends this rank's block to
        every rank and receives each rank's block straight into its place in the vector.  gloo's
        ``all_gather`` needs equal sizes (padding), receives into separate tensors to be concatenated,
        and is slower itself: 93 against 31 ms for two 45 MB blocks on this machine's loopback."""
        import torch

        sizes = [int(v) for v in sizes]
        mine = sizes[self.rank]
        send = np.empty(mine * self.world, dtype=dtype)  # the block once per receiver
        send_t = torch.from_numpy(send)
        out = self.vector(sizes, dtype)

        def gather(block: np.ndarray, value: float) -> tuple[np.ndarray, float]:
            for r in range(self.world):
                send[r * mine:(r + 1) * mine] = block
            self.dist.all_to_all_single(torch.from_numpy(out), send_t, output_split_sizes=sizes,
                                        input_split_sizes=[mine] * self.world)
            return out, float(self.allreduce(np.array([value], dtype=np.float64))[0])

        return gather


class RayComm(Comm):
    """Collectives of Ray actors, peer to peer: in round r every rank calls each other rank's
    ``deliver`` (:class:`workloads.harness.raylaunch.RayRank`) with what it sends there, and waits until every
    peer's item of round r is in its mailbox (one call between two ranks, no meeting point: a round
    through a hub actor took two calls and, between the lab's nodes, two object-store pulls per rank).

    Arrays up to :data:`INLINE_BYTES` travel inside the call (Ray sends them so when its
    ``max_direct_call_object_size`` allows: the harness's local Ray and the ray role set it to this).  A larger array is put in the object store once and passed as a top-level argument,
    which Ray fetches to the receiver's node before the call runs (zero-copy on one node)."""

    INLINE_BYTES = 4 << 20
    PART_BYTES = 32 << 20  # alltoall's pieces cross in parts of at most this (:meth:`alltoall`)
    timeout_s: float = COLLECTIVE_TIMEOUT_S  # a round waits this long for its peers, then fails

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.peers: list[Any] = []
        self.round = 0
        self.box: dict[int, dict[int, tuple[Any, float]]] = {}
        self.arrived = threading.Condition()

    def deliver(self, rnd: int, sender: int, array: Any, value: float) -> None:
        """Called by the peer ``sender`` (in another thread of this actor)."""
        with self.arrived:
            self.box.setdefault(rnd, {})[sender] = (array, value)
            self.arrived.notify_all()

    def _send(self, a: np.ndarray) -> Any:
        import ray

        if a.nbytes <= self.INLINE_BYTES:
            return a
        return ray.put(np.ascontiguousarray(a))

    def _items(self, sends: list[np.ndarray], lo: int, hi: int) -> list[Any]:
        """What a round sends to each rank p: ``sends[p][lo:hi]``, put in the object store (if large) once
        per array however many ranks it goes to; this rank's own part as it is."""
        refs: dict[int, Any] = {}
        for p, a in enumerate(sends):
            if p != self.rank and id(a) not in refs:
                refs[id(a)] = self._send(a[lo:hi])
        return [a[lo:hi] if p == self.rank else refs[id(a)] for p, a in enumerate(sends)]

    def _exchange(self, items: list[Any], value: float = 0.0) -> list[tuple[Any, float]]:
        """``items[p]`` (an array or a ref of one) with ``value`` to each peer p; returns what
        each rank sent here in rank order, this rank's own item in its place."""
        self.round += 1
        rnd = self.round
        for p, peer in enumerate(self.peers):
            if p != self.rank:
                peer.deliver.remote(rnd, self.rank, items[p], value)
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.box.get(rnd, ())) == self.world - 1, self.timeout_s):
                silent = sorted(set(range(self.world)) - {self.rank} - set(self.box.get(rnd, ())))
                raise RuntimeError(f"rank {self.rank}: nothing from rank(s) {silent} in collective round {rnd} "
                                   f"within {self.timeout_s:.0f} s (a peer stopped or hangs)")
            got = self.box.pop(rnd, {})  # none in a world of one
        got[self.rank] = (items[self.rank], value)
        return [got[r] for r in range(self.world)]

    def _cross(self, sends: list[np.ndarray], into: list[np.ndarray], step: int, rounds: int,
               value: float = 0.0, first: int = 0, release: bool = False) -> list[float]:
        """Rounds ``first`` to ``rounds - 1``: in round k, ``sends[p][k*step:(k+1)*step]`` goes to each
        rank p (put in the object store once however many ranks it goes to) and the part rank s sent
        here is copied into ``into[s]`` at the same offset as it lands, so the store holds one round's
        parts at a time.  With ``release`` an array sent in full leaves ``sends`` (its memory with it).
        Returns the values of the first round, in rank order."""
        values: list[float] = []
        for k in range(first, rounds):
            lo, hi = k * step, (k + 1) * step
            items = self._items(sends, lo, hi)
            if release:
                sends[:] = [a if p == self.rank or hi < len(a) else a[:0].copy() for p, a in enumerate(sends)]
            landed = self._exchange(items, value)
            self._place(landed, into, sends, lo)
            values = values or [v for _, v in landed]
            del items, landed  # this round's parts leave the object store
        return values

    def _place(self, landed: list[tuple[Any, float]], into: list[np.ndarray], sends: list[np.ndarray],
               lo: int) -> None:
        """Each rank's landed part into its place (this rank's own only where it is not already there)."""
        for s, (part, _) in enumerate(landed):
            if s != self.rank or into[s] is not sends[s]:
                into[s][lo:lo + len(part)] = part

    def allgather(self, a: np.ndarray) -> list[np.ndarray]:
        """Every rank's array, crossing in parts of at most :data:`PART_BYTES` (:meth:`_cross`; the
        lengths beside the first): whole, the degree counts of `data` (166 MB a rank) took ~500 MB of
        every node's store, whose pages stay resident after the run.  An array that fits one part
        comes back as it arrived."""
        step = max(self.PART_BYTES // max(a.dtype.itemsize, 1), 1)
        sends = [a] * self.world
        first = self._exchange(self._items(sends, 0, step), float(len(a)))
        lengths = [int(v) for _, v in first]
        if max(lengths) <= step:
            return [part for part, _ in first]
        out = [a if r == self.rank else np.empty(n, a.dtype) for r, n in enumerate(lengths)]
        self._place(first, out, sends, 0)
        del first
        self._cross(sends, out, step, -(-max(lengths) // step), first=1)
        return out

    def allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        """As :meth:`Comm.allreduce`, a slice of at most :data:`PART_BYTES` at a time: no rank holds
        every rank's copy of a large array (the degree counts), nor does its object store."""
        flat = np.asarray(a).ravel()
        if flat.nbytes <= self.PART_BYTES:
            return super().allreduce(a, op)
        step = max(self.PART_BYTES // flat.dtype.itemsize, 1)
        out = np.empty_like(flat)
        for lo in range(0, len(flat), step):
            parts = self.allgather(flat[lo:lo + step])
            acc = out[lo:lo + step]
            np.copyto(acc, parts[0])
            for other in parts[1:]:
                OPS[op](acc, other, out=acc)
            del parts
        return out.reshape(np.shape(a))

    def block_gatherer(self, sizes: Sequence[int], dtype: Any) -> Gatherer:
        """As :meth:`Comm.block_gatherer`: the blocks cross in parts of at most :data:`PART_BYTES`
        (:meth:`_cross`, the value beside the first).  Whole, the blocks of `data`'s three ranks held
        ~330 MB of every node's store each iteration, and a store's pages stay resident after a run."""
        out = self.vector(sizes, dtype)
        starts = np.concatenate([[0], np.cumsum([int(v) for v in sizes])]).astype(int)
        into = [out[starts[r]:starts[r + 1]] for r in range(self.world)]
        step = max(self.PART_BYTES // np.dtype(dtype).itemsize, 1)
        rounds = max(-(-max((int(v) for v in sizes), default=0) // step), 1)

        def gather(block: np.ndarray, value: float) -> tuple[np.ndarray, float]:
            values = self._cross([block] * self.world, into, step, rounds, float(value))
            return out, sum(values)  # rank order, as allreduce adds

        return gather

    def alltoall(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """The pieces (of one dtype) cross in parts of at most :data:`PART_BYTES` (:meth:`_cross`), each
        leaving this rank's memory once sent in full.  Sent whole, a graph's arcs (~0.6 GB per rank on
        ``data_2``) filled the lab's 1 GiB stores, which spilled to disk and kept every page they had
        touched resident."""
        sends = pieces[:]
        pieces.clear()
        dtype = sends[self.rank].dtype
        lengths = np.stack(self.allgather(np.array([len(p) for p in sends], dtype=np.int64)))  # [from, to]
        step = max(self.PART_BYTES // dtype.itemsize, 1)
        longest = int(lengths[~np.eye(self.world, dtype=bool)].max(initial=0))  # between two ranks
        got = [sends[s] if s == self.rank else np.empty(int(lengths[s, self.rank]), dtype)
               for s in range(self.world)]
        self._cross(sends, got, step, -(-longest // step), release=True)
        return got
