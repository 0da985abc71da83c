"""Run a function on N ranks: spawned worker processes, or the ranks torchrun started.

``launch(fn, num_procs, *args)`` calls ``fn(worker, *args)`` on every rank, where ``worker`` is a
``Worker`` (rank, world size, device); the caller gets rank 0's return value. It starts the processes
itself (torch.multiprocessing spawn; NCCL on GPUs, gloo on CPU) unless the environment says torchrun
already did (``RANK``/``WORLD_SIZE``): then this process is one rank and runs ``fn`` directly.

Failure: a worker that raises sends its exception to the caller, which kills every other worker and
re-raises it (with the worker's traceback as the cause). A worker that dies without a word (a signal,
out of memory) is reported by rank and exit code. Process-group timeouts bound any collective; each
worker also exits if the caller disappears, so no process is left behind. Only rank 0's result comes
back, after it has finished: outputs are written by the caller, never half-way by a worker.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from porting.errors import UserError

DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Worker:
    """What a rank's function needs to know about itself; the process group is the default one."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class WorkerError(RuntimeError):
    """A worker failed without a picklable exception (killed by a signal, out of memory, ...)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launch(fn: Callable[..., Any], num_procs: int, *args: Any, device: str | None = None,
           timeout: timedelta = DEFAULT_TIMEOUT) -> Any:
    """Call ``fn(worker, *args)`` on ``num_procs`` ranks and return rank 0's result.

    ``fn`` must be importable by name (a module-level function): spawned workers unpickle it.
    ``device``: ``"cuda"`` (one GPU per rank, NCCL) or ``"cpu"`` (gloo); default CUDA when present.
    Under torchrun, every rank calls ``launch``; rank 0 gets the result and the others ``None``.
    """
    if under_torchrun():
        return _run_under_torchrun(fn, num_procs, args, device, timeout)
    device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if num_procs < 1:
        raise UserError(f"the number of processes must be at least 1, got {num_procs}")
    if device_type == "cuda" and num_procs > torch.cuda.device_count():
        raise UserError(f"asked for {num_procs} GPUs but this machine has {torch.cuda.device_count()}; "
                        f"use --num-gpus {max(1, torch.cuda.device_count())} or fewer")
    return _spawn(fn, num_procs, args, device_type, timeout)


# ----------------------------------------------------------------------------------------------
# In each rank
# ----------------------------------------------------------------------------------------------
def _start_rank(rank: int, world: int, device_type: str, init_method: str, timeout: timedelta) -> Worker:
    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world,
                                timeout=timeout, device_id=device)
    else:
        # share the cores instead of every rank oversubscribing all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    return Worker(rank, world, device)


def _exit_with_parent(parent_pid: int) -> None:
    """Die when the caller dies (it was killed, so it cannot kill us): no orphans."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(rank, fn, args, world, device_type, init_method, timeout, messages, parent_pid):
    _exit_with_parent(parent_pid)
    try:
        worker = _start_rank(rank, world, device_type, init_method, timeout)
        result = fn(worker, *args)
        if rank == 0:
            # pickled here (tensors by value), so nothing refers to this process once it exits
            messages.put(("result", rank, pickle.dumps(result)))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: B036 - report every failure, then exit non-zero
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = None
        messages.put(("error", rank, (payload, f"{type(exc).__name__}: {exc}", traceback.format_exc())))
        os._exit(1)  # skip process-group teardown: peers may be stuck in a collective


# ----------------------------------------------------------------------------------------------
# In the caller
# ----------------------------------------------------------------------------------------------
def _raise_remote(rank: int, world: int, payload: bytes | None, summary: str, tb: str):
    exc = None
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = WorkerError(f"rank {rank} failed: {summary}")
    exc.add_note(f"(raised on rank {rank} of {world})")
    raise exc from RemoteTraceback(f"\n\nTraceback on rank {rank}:\n{tb}")


def _spawn(fn, world, args, device_type, timeout):
    ctx = mp.get_context("spawn")
    messages = ctx.SimpleQueue()
    store_dir = tempfile.mkdtemp(prefix="vidport-pg-")
    init_method = f"file://{os.path.join(store_dir, 'store')}"
    procs = [ctx.Process(target=_worker_main, name=f"vidport-rank{rank}",
                         args=(rank, fn, args, world, device_type, init_method, timeout, messages, os.getpid()))
             for rank in range(world)]
    try:
        for p in procs:
            p.start()
        have_result, result = False, None
        while True:
            while not messages.empty():
                kind, rank, body = messages.get()
                if kind == "error":
                    _raise_remote(rank, world, *body)
                have_result, result = True, pickle.loads(body)
            if all(p.exitcode is not None for p in procs) and messages.empty():
                break
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead and messages.empty():
                time.sleep(0.2)  # an error message may still be on its way
                if messages.empty():
                    r, code = dead[0]
                    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    raise WorkerError(f"rank {r} of {world} {how} without reporting an error "
                                      "(out of memory? see its output above)")
                continue
            time.sleep(0.02)
        if not have_result:
            raise WorkerError("rank 0 finished without returning a result")
        return result
    finally:
        _stop(procs)
        shutil.rmtree(store_dir, ignore_errors=True)


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _run_under_torchrun(fn, num_procs, args, device, timeout):
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if num_procs not in (None, world):
        raise UserError(f"asked for {num_procs} processes but torchrun started {world}; "
                        f"pass --nproc-per-node {num_procs} to torchrun or --num-gpus {world}")
    device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    try:
        result = fn(Worker(rank, world, device), *args)
    finally:
        if owns_group:
            dist.destroy_process_group()
    return result if rank == 0 else None
