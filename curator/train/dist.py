"""torch.distributed helpers shared by the sampler and the epoch loop.

Every helper is a no-op (or answers 1) without an initialised process group, so the same
code runs in one process and under DDP / Ray Train. The sampler's score exchanges get a
group of their own and a background thread to run on, off the training thread.
"""

from __future__ import annotations

import atexit
import gc
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch
from torch.distributed import ProcessGroup

T = TypeVar("T")


def initialized() -> bool:
    """Is a default process group in use?"""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


_world_size: tuple[Any, int] = (None, 1)  # (the default group, its size): asked for at every epoch boundary


def world_size() -> int:
    """World size of the default process group, or 1 when torch.distributed is not in use."""
    global _world_size
    world = torch.distributed.group.WORLD if torch.distributed.is_available() else None
    if world is None:
        return 1
    if _world_size[0] is not world:  # c10d's own lookup is a dozen Python calls
        _world_size = (world, torch.distributed.get_world_size())
    return _world_size[1]


_exchange_group: tuple[Any, ProcessGroup] | None = None  # (the default group it was made for, the group)


def exchange_group() -> ProcessGroup:
    """A gloo group over every rank, for the sampler's score exchanges alone.

    Its collectives run on a background thread (:class:`Background`) while the training thread
    goes on with its own on the default group (DDP's all-reduces, the loop's metrics): separate
    groups never mix their messages, whatever order the two threads reach them in. Being gloo,
    it moves the CPU-side records directly, also where the default backend is NCCL. Made on
    first use, which is a collective call: the sampler makes it in set_epoch/sync, which every
    rank calls at the same point.
    """
    global _exchange_group
    world = torch.distributed.group.WORLD
    if _exchange_group is None or _exchange_group[0] is not world:
        _exchange_group = (world, torch.distributed.new_group(backend="gloo"))
    return _exchange_group[1]


@atexit.register
def _forget_groups() -> None:
    """Drop this module's process-group references before the interpreter tears down.

    Held to the end, a gloo group is destroyed during finalization, where its C++ destructor
    can abort the process ("terminate called without an active exception", SIGABRT): a job
    that finished would exit as failed, now and then (seen about once in 20 two-rank runs).
    """
    global _exchange_group, _world_size
    if _exchange_group is None and _world_size[0] is None:
        return
    _exchange_group, _world_size = None, (None, 1)
    gc.collect()


class Background(Generic[T]):
    """``fn()`` on this process's exchange thread, after every job submitted before it.

    One daemon thread per process runs the jobs one at a time in the order they were
    submitted, so the collectives they make are issued in the same order on every rank (each
    rank submits in program order), whichever sampler submitted them. A submit costs the
    training thread a queue put, not a thread start. ``cpu_s`` is the CPU time the job took on
    that thread: work done off the training thread.
    """

    _lock = threading.Lock()
    _jobs: queue.SimpleQueue[Background[Any]] | None = None
    _pid = 0  # the process that started the thread (a forked child has none)

    def __init__(self, fn: Callable[[], T]) -> None:
        self.cpu_s = 0.0
        self._fn: Callable[[], T] | None = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        with Background._lock:
            if Background._jobs is None or Background._pid != os.getpid():
                Background._jobs, Background._pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(target=Background._serve, args=(Background._jobs,), name="curator-infobatch-exchange",
                                 daemon=True).start()
            Background._jobs.put(self)

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[Background[Any]]) -> None:
        while True:
            jobs.get()._run()

    def _run(self) -> None:
        fn, self._fn = self._fn, None
        t = time.thread_time()
        try:
            self._value = fn()  # type: ignore[misc]
        except BaseException as err:  # handed to whoever waits for the result
            self._error = err
        finally:
            self.cpu_s = time.thread_time() - t
            self._done.set()

    def wait(self) -> None:
        """Wait for the job to finish, without taking its result."""
        self._done.wait()

    def result(self) -> T:
        """Wait for the job; its return value (handed over once), or its exception raised here."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        value, self._value = self._value, None
        return value  # type: ignore[return-value]


def all_gather_fixed(t: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Every rank's CPU tensor ``t`` (same shape on every rank), stacked along a new first axis."""
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(out, t, group=group)
    return torch.stack(out)


def all_gather_varlen(t: torch.Tensor, counts: list[int], group: ProcessGroup) -> torch.Tensor:
    """all_gather of (rows x n) CPU tensors whose n differs by rank, concatenated along n in rank order.

    ``counts`` (every rank's n, e.g. from an earlier :func:`all_gather_fixed`) sizes the
    padding, so this is one collective.
    """
    m = max(counts)
    padded = torch.zeros((*t.shape[:-1], m), dtype=t.dtype)
    padded[..., : t.shape[-1]] = t
    out = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(out, padded, group=group)
    return torch.cat([o[..., :c] for o, c in zip(out, counts, strict=True)], dim=-1)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (the values themselves without torch.distributed)."""
    if not initialized():
        return values
    dev = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()
