"""Run functions on N ranks: spawned worker processes, or the ranks torchrun started.

``launch(fn, num_procs, *args)`` calls ``fn(worker, *args)`` on every rank, where ``worker`` is a
``Worker`` (rank, world size, device, and a ``state`` dict that lives as long as the process); the
caller gets rank 0's return value. ``WorkerPool`` keeps the ranks alive between calls (load a model
once, generate many times). Processes are started here (torch.multiprocessing spawn; NCCL on GPUs,
gloo on CPU) unless the environment says torchrun already did (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``):
then this process is one rank and runs the functions itself.

Failure: a worker that raises sends its exception to the caller, which kills every other worker and
re-raises it (with the worker's traceback as the cause). A worker that dies without a word (a signal,
out of memory) is reported by rank and exit code. Process-group timeouts bound any collective; each
worker also exits if the caller disappears, so no process is left behind. Only rank 0's result comes
back, after it has finished: outputs are written by the caller, never half-way by a worker.
"""

from __future__ import annotations

import dataclasses
import multiprocessing.process
import multiprocessing.util
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vidport.devices import default_device
from vidport.errors import UserError

DEFAULT_TIMEOUT = timedelta(minutes=10)
# a spawned rank that found itself re-running the caller's unguarded script exits with this code
UNGUARDED_MAIN_EXIT = 86


@dataclass(frozen=True)
class Worker:
    """What a rank's function needs to know about itself; the process group is the default one.
    ``state`` keeps what one call leaves for the next on this rank (e.g. the loaded model)."""

    rank: int
    world_size: int
    device: torch.device
    state: dict = field(default_factory=dict, compare=False, repr=False)
    progress: Callable[..., None] | None = field(default=None, compare=False, repr=False)

    def report_progress(self, *values) -> None:
        """Pass ``values`` to the caller's ``on_progress`` (rank 0 only; no-op elsewhere or without one)."""
        if self.progress is not None and self.rank == 0:
            self.progress(*values)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class WorkerError(RuntimeError):
    """A worker failed without a picklable exception (killed by a signal, out of memory, ...)."""


class PeerError(RuntimeError):
    """A rank stopped because another rank failed (it was sent that rank's error): never the cause to report
    while the failing rank's own error is there."""


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
    with WorkerPool(num_procs, device=device, timeout=timeout) as pool:
        return pool.run(fn, *args)


class WorkerPool:
    """``num_procs`` ranks that stay up between ``run`` calls; close it (or use ``with``) when done.

    A failed ``run`` closes the pool: every rank is stopped and the worker's exception re-raised here.
    A pool still open when the interpreter exits is closed then.
    """

    def __init__(self, num_procs: int, *, device: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT):
        device_type = device or default_device().type
        self.num_procs = num_procs
        self._procs: list = []
        self._local: Worker | None = None  # under torchrun: this process's rank
        if under_torchrun():
            self._local, owns_group = _join_torchrun(num_procs, device_type, timeout)
            self._finalizer = weakref.finalize(self, _leave_torchrun, owns_group)
            return
        if _reimporting_main():
            # this is a rank re-running the caller's script, which lacks the main guard: starting ranks
            # here would recurse; the caller sees the exit code and names the fix
            _exit(UNGUARDED_MAIN_EXIT)
        if isinstance(num_procs, bool) or not isinstance(num_procs, int) or num_procs < 1:
            raise UserError(f"the number of processes must be an integer >= 1, got {num_procs!r}")
        if device_type == "cuda" and num_procs > torch.cuda.device_count():
            raise UserError(f"asked for {num_procs} GPUs but this machine has {torch.cuda.device_count()}; "
                            f"use --num-gpus {max(1, torch.cuda.device_count())} or fewer")
        ctx = mp.get_context("spawn")
        self._messages = ctx.SimpleQueue()
        self._inboxes = [ctx.SimpleQueue() for _ in range(num_procs)]
        store_dir = tempfile.mkdtemp(prefix="vidport-pg-")
        init_method = f"file://{os.path.join(store_dir, 'store')}"
        self._procs = [ctx.Process(target=_worker_main, name=f"vidport-rank{rank}",
                                   args=(rank, num_procs, device_type, init_method, timeout, self._inboxes[rank],
                                         self._messages, os.getpid()))
                       for rank in range(num_procs)]
        # runs on close(), on garbage collection, or at interpreter exit (before multiprocessing's own
        # exit handler, which would otherwise wait forever for the idle ranks)
        self._finalizer = weakref.finalize(self, _stop_ranks, self._procs, self._inboxes, store_dir, False)
        try:
            for p in self._procs:
                p.start()
        except BaseException:
            self.close(force=True)
            raise

    @property
    def local_worker(self) -> Worker | None:
        """Under torchrun, this process's rank (its ``state`` included); None for spawned ranks."""
        return self._local

    def run(self, fn: Callable[..., Any], *args: Any, on_progress: Callable[..., None] | None = None) -> Any:
        """``fn(worker, *args)`` on every rank; rank 0's result (under torchrun: ``None`` off rank 0).

        ``on_progress(*values)`` is called here for every ``worker.report_progress(*values)`` of rank 0.
        """
        if self._local is not None:
            result = fn(dataclasses.replace(self._local, progress=on_progress), *args)
            return result if self._local.rank == 0 else None
        if not self._finalizer.alive:
            raise WorkerError("this worker pool is closed (a worker failed, or close() was called)")
        try:
            for inbox in self._inboxes:
                inbox.put((fn, args, on_progress is not None))
            return self._wait_for_result(on_progress)
        except BaseException:
            self.close(force=True)
            raise

    def _wait_for_result(self, on_progress) -> Any:
        """Rank 0's result once every rank has finished the run; the first failure otherwise."""
        done: set[int] = set()
        result = None
        while True:
            if not self._messages.empty():
                kind, rank, body = self._messages.get()
                if kind == "progress":
                    on_progress(*body)
                    continue
                if kind == "error":
                    self._raise_first_cause(rank, body)
                if kind == "result":
                    result = pickle.loads(body)
                done.add(rank)
                if len(done) == self.num_procs:
                    return result
                continue
            if any(p.exitcode is not None for p in self._procs):
                time.sleep(0.2)  # an error message may still be on its way
                if self._messages.empty():
                    self._raise_silent_death()
                continue
            time.sleep(0.01)

    def _raise_first_cause(self, rank: int, body) -> None:
        """A rank that died silently (a signal) breaks its peers' collectives: it, not their errors,
        is the cause to report. Otherwise the first error that arrived that is not a ``PeerError`` (a rank that
        stopped because it was told another one failed) is; failing that, the first error."""
        time.sleep(0.3)
        reported = {rank}
        errors = [(rank, body)]
        while not self._messages.empty():
            kind, r, b = self._messages.get()
            reported.add(r)
            if kind == "error":
                errors.append((r, b))
        if any(p.exitcode not in (None, 0) and r not in reported for r, p in enumerate(self._procs)):
            self._raise_silent_death(reported)
        rank, body = next((e for e in errors if not e[1][1].startswith(f"{PeerError.__name__}:")), errors[0])
        _raise_remote(rank, self.num_procs, *body)

    def _raise_silent_death(self, reported: set[int] = frozenset()) -> None:
        r, code = next((r, p.exitcode) for r, p in enumerate(self._procs)
                       if p.exitcode is not None and r not in reported)
        if code == UNGUARDED_MAIN_EXIT:
            script = getattr(sys.modules["__main__"], "__file__", None) or "your script"
            raise UserError(f"{script} started worker processes when imported: wrap the code that creates "
                            'VideoGenerator(num_gpus>1) in `if __name__ == "__main__":` (multi-GPU workers are '
                            "started with spawn, which re-imports your script)")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise WorkerError(f"rank {r} of {self.num_procs} {how} without reporting an error "
                          "(out of memory? see its output above)")

    def close(self, force: bool = False) -> None:
        """Stop every rank: politely (``force``: at once, by signal)."""
        if self._local is not None:
            self._finalizer()
            self._local = None
            return
        detached = self._finalizer.detach()
        if detached is not None:
            _, stop, (procs, inboxes, store_dir, _), _ = detached
            stop(procs, inboxes, store_dir, force)
            self._messages = None  # release the queues' semaphores now, not at interpreter exit

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop_ranks(procs, inboxes, store_dir: str, force: bool) -> None:
    if not force:
        for p, inbox in zip(procs, inboxes):
            if p.is_alive():
                inbox.put(None)
        deadline = time.monotonic() + 10
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    inboxes.clear()
    if store_dir:
        shutil.rmtree(store_dir, ignore_errors=True)


def _reimporting_main() -> bool:
    """True in a spawned process while it re-imports the caller's main module (the test multiprocessing
    itself makes, too late and as a traceback, in ``spawn._check_not_importing_main``)."""
    return getattr(multiprocessing.process.current_process(), "_inheriting", False)


def _leave_torchrun(owns_group: bool) -> None:
    if owns_group and dist.is_initialized():
        dist.destroy_process_group()


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
    """Die when the caller dies (it was killed, so it cannot stop us): no orphans."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(rank, world, device_type, init_method, timeout, inbox, messages, parent_pid):
    _exit_with_parent(parent_pid)
    try:
        worker = _start_rank(rank, world, device_type, init_method, timeout)
        while (job := inbox.get()) is not None:
            fn, args, wants_progress = job
            progress = (lambda *values: messages.put(("progress", rank, values))) if wants_progress else None
            result = fn(dataclasses.replace(worker, progress=progress), *args)
            if device_type == "cuda":
                # NCCL collectives return before they complete: a rank is done when its GPU work is (a peer that
                # failed leaves this rank waiting here, where the caller sees the peer's failure)
                torch.cuda.synchronize()
            # every rank reports: a run succeeds only when all of them did. Rank 0's result is pickled here
            # (tensors by value), so nothing refers to this process once it exits
            messages.put(("result", rank, pickle.dumps(result)) if rank == 0 else ("done", rank, None))
        worker.state.clear()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: B036 - report every failure, then exit non-zero
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = None
        messages.put(("error", rank, (payload, f"{type(exc).__name__}: {exc}", traceback.format_exc())))
        _exit(1)  # skip process-group teardown: peers may be stuck in a collective
    # multiprocessing's exit handler unregisters the semaphores this process made (tqdm's locks); the
    # rest of the interpreter's teardown is slow and has nothing left to do
    multiprocessing.util._exit_function()
    _exit(0)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def _join_torchrun(num_procs, device_type, timeout) -> tuple[Worker, bool]:
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if num_procs != world:
        raise UserError(f"asked for {num_procs} processes but torchrun started {world}; "
                        f"pass --nproc-per-node {num_procs} to torchrun, or --num-gpus {world}")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    return Worker(rank, world, device), owns_group


def from_pretrained(path_or_hub_id, *, num_gpus: int, **options):
    """The entry ``VideoGenerator.from_pretrained(num_gpus=N > 1)`` delegates to; see
    ``runtime.parallel.generator.from_pretrained``."""
    from vidport.runtime.parallel.generator import from_pretrained as parallel_from_pretrained

    return parallel_from_pretrained(path_or_hub_id, num_gpus=num_gpus, **options)
