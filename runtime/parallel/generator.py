"""Multi-GPU video generation: a ``VideoGenerator`` on every rank, the DiT spread over the ranks.

Every rank loads the same repo on its own device (the text encoder on rank 0 only: it encodes the prompt and sends
the encoding to the others, ``EncodeOnRankZero``), replaces its DiT by the sequence-parallel wrapper
(and, with ``cfg_parallel``, its CFG strategy by the CFG-parallel one) and runs the same pipeline on
the same seed, so every rank steps identical latents; a family that can tile its VAE decode shares the decode over
the ranks (the tiles, ``runtime.vae_tiling``, or untiled the rows, ``runtime.models.wan.vae_split``) and gives every
rank the whole video. Rank 0's
frames and report come back to the caller, which writes the mp4 (atomically) only once the run has succeeded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
from vidport.runtime.parallel.launch import DEFAULT_TIMEOUT, PeerError, Worker, WorkerPool
from vidport.runtime.parallel.ulysses import check_heads

from vidport.devices import default_device
from vidport.errors import UserError

if TYPE_CHECKING:
    import torch

# what VideoGenerator.from_pretrained passes on to each rank's own (single-device) from_pretrained
LOAD_OPTIONS = ("attention_backend", "dtype", "cfg", "scheduler", "flow_shift", "sampler_grid", "noise", "precision",
                "compile", "vae_tiling")


def from_rank_zero(compute: Callable[[], object], peer_error: Callable[[dict], Exception], group=None):
    """``compute()`` run by rank 0 alone; its (picklable) result on every rank of ``group``, by one broadcast.
    When it raises, rank 0 re-raises its own exception and every other rank raises ``peer_error(info)`` (info:
    ``message``, ``type``, ``user_error``), so no rank is left waiting in a collective."""
    import torch.distributed as dist

    message: list = [None]
    if dist.get_rank(group) == 0:
        try:
            message[0] = {"value": compute()}
        except Exception as e:
            info = {"message": str(e), "type": type(e).__name__, "user_error": isinstance(e, UserError)}
            dist.broadcast_object_list([{"error": info}], src=0, group=group)
            raise
    dist.broadcast_object_list(message, src=0, group=group)
    if "error" in message[0]:
        raise peer_error(message[0]["error"])
    return message[0]["value"]


def resolve_backends_on_ranks(name: str | None, device: torch.device, dtype: torch.dtype,
                              head_dim: int | None = None) -> tuple[str, str]:
    """``runtime.attention.resolve_backends`` for every rank of the default process group, answered by rank 0:
    ``auto`` (or ``VIDPORT_ATTENTION_BACKEND``) is resolved and its probes and fallback line happen once, and
    every rank runs the same kernels. Each rank then checks that it can run them; a refusal is raised on every
    rank, so none is left waiting in a collective."""
    from vidport.runtime.attention import resolve_backend, resolve_backends

    backends = tuple(from_rank_zero(  # rank 0's refusal, raised on every rank as rank 0 raised it
        lambda: resolve_backends(name, device, dtype, head_dim=head_dim),
        lambda info: (UserError if info["user_error"] else RuntimeError)(info["message"])))
    for backend in dict.fromkeys(backends):  # probed here too: this rank's GPU and libraries
        resolve_backend(backend, device, dtype)
    return backends


class EncodeOnRankZero:
    """A pipeline's encode stage run by rank 0 alone; its result (``state.cond``, ``state.uncond``: the stage's
    outputs, ``PipelineState``) sent to the other ranks, which load no text encoder (umT5-xxl is 11 GB a rank).
    A failure on rank 0 reaches every rank, so none is left waiting in the broadcast."""

    def __init__(self, stage, group=None):
        self.stage, self.group, self.name = stage, group, stage.name

    def __call__(self, state):
        import torch.distributed as dist

        encoded = {}

        def encode():
            encoded["state"] = self.stage(state)
            return {"cond": _moved(encoded["state"].cond, "cpu"), "uncond": _moved(encoded["state"].uncond, "cpu")}

        answer = from_rank_zero(encode, lambda info: PeerError(  # rank 0 raises its own; this rank stops as its peer
            f"rank 0 could not encode the prompt: {info['type']}: {info['message']}"), self.group)
        if dist.get_rank(self.group) == 0:
            return encoded["state"]
        state.cond, state.uncond = _moved(answer["cond"], state.device), _moved(answer["uncond"], state.device)
        return state


def _moved(cond, device):
    from vidport.runtime.pipeline.state import Conditioning

    return None if cond is None else Conditioning({k: v.to(device) for k, v in cond.kwargs.items()})


def _load(worker: Worker, source, load_kwargs: dict, cfg_parallel: bool) -> dict:
    import torch.distributed as dist
    from vidport.runtime.generator import VideoGenerator, resolve_dtype, transformer_setting
    from vidport.runtime.parallel import parallelize

    marks = {"started": time.time()}  # wall clock: the caller's start and the ranks' marks compare on one host
    # before any rank loads anything: one choice of attention kernels for all ranks (rank 0's)
    dtype = resolve_dtype(load_kwargs.get("dtype"), worker.device)
    backends = resolve_backends_on_ranks(load_kwargs.get("attention_backend"), worker.device, dtype,
                                         transformer_setting(source, "attention_head_dim"))
    marks["attention"] = time.time()
    # only rank 0 loads the text encoder and encodes; the others receive its encoding (EncodeOnRankZero)
    gen = VideoGenerator.from_pretrained(source, num_gpus=1, device=worker.device, text_encoder=worker.rank == 0,
                                         **{**load_kwargs, "attention_backend": backends[0]})
    marks["components"] = time.time()
    gen.stage_wrappers["encode"] = EncodeOnRankZero
    gen.components.transformer.set_attention_backend(*backends)
    # the family's plan checks its head count first: it fails before any collective, naming the sizes that work
    plan = gen.family.load(gen.family.parallel_plan)
    gen.components.transformer, cfg = parallelize(gen.components.transformer, plan, cfg_parallel=cfg_parallel)
    if cfg is not None:
        gen.cfg = cfg
    if getattr(gen.pipeline, "TILED_DECODE", False) is True:
        gen.components.decode_group = dist.group.WORLD  # the ranks share the VAE decode (its tiles, or its rows)
    marks["parallelize"] = time.time()
    dist.barrier()
    marks["peers"] = time.time()
    worker.state["generator"] = gen
    return {"defaults": gen.defaults, "cfg": gen.cfg.name, "marks": marks}


def load_breakdown(start: float, marks: dict, end: float) -> dict[str, float]:
    """Where a multi-GPU load's seconds went, as rank 0 saw them (``start``/``end``: the caller's wall clock):
    starting the ranks, choosing the attention kernels, loading the components (rank 0 also loads the text encoder),
    the parallel plan, waiting for the other ranks."""
    points = [("start_ranks", "started"), ("attention", "attention"), ("components", "components"),
              ("parallelize", "parallelize"), ("wait_for_peers", "peers")]
    out, last = {}, start
    for name, mark in points:
        out[name] = marks[mark] - last
        last = marks[mark]
    out["return"] = end - last
    return out


def _generate(worker: Worker, prompt: str, kwargs: dict):
    gen = worker.state["generator"]
    frames = gen.generate_video(prompt, on_step=worker.report_progress, **kwargs)
    return frames, gen.last_report


class ParallelVideoGenerator:
    """``VideoGenerator``'s ``generate_video``/``last_report`` over ``num_gpus`` ranks. ``close()`` (or
    ``with``) stops the ranks; a failed generation stops them too and re-raises the worker's error."""

    def __init__(self, pool: WorkerPool, source: str, info: dict, num_gpus: int, cfg_parallel: bool,
                 load_seconds: float = 0.0, load_parts: dict | None = None):
        self.pool, self.source, self.load_seconds = pool, source, load_seconds
        self.load_parts = load_parts
        self.defaults = info["defaults"]
        self.num_gpus, self.cfg_parallel = num_gpus, cfg_parallel
        self.last_report = None

    def generate_video(self, prompt: str, *, output_path: str | os.PathLike | None = None,
                       on_step: Callable[[int, int], None] | None = None, **kwargs) -> np.ndarray | None:
        """Same arguments as ``VideoGenerator.generate_video``; ``on_step`` hears rank 0's steps.
        Under torchrun only rank 0 gets the frames (and writes the mp4); other ranks get None."""
        from vidport.runtime.pipeline.validate import validate_output_path

        out = None if output_path is None else validate_output_path(output_path)
        result = self.pool.run(_generate, prompt, kwargs, on_progress=on_step)
        if result is None:  # a torchrun rank other than 0
            return None
        frames, report = result
        report.settings.update(num_gpus=self.num_gpus, cfg_parallel=self.cfg_parallel)
        report.timings["load"] = self.load_seconds  # as the caller saw it: starting the ranks included
        if self.load_parts:
            report.extra["load_s"] = dict(self.load_parts)
        if out is not None:
            from vidport.runtime.video import write_mp4

            start = time.perf_counter()
            write_mp4(frames, out, fps=self.defaults["fps"])
            report.timings["write"] = time.perf_counter() - start
            report.output_path = str(out)
        self.last_report = report
        return frames

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> ParallelVideoGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def from_pretrained(path_or_hub_id, *, num_gpus: int, device=None, cfg_parallel: bool = False,
                    timeout: float | timedelta = DEFAULT_TIMEOUT, **load_kwargs) -> ParallelVideoGenerator:
    """``VideoGenerator.from_pretrained(..., num_gpus=N)`` lands here. ``device``: "cuda" (default when
    present; one GPU per rank) or "cpu" (gloo; tests). ``cfg_parallel``: the conditional and
    unconditional branches on two halves of the ranks (needs an even ``num_gpus``). ``timeout``: seconds
    any collective may wait before the ranks give up."""
    from vidport.runtime.generator import check_vae_tiling, family_of_repo, resolve_repo, transformer_setting

    device_type = default_device(device).type
    if cfg_parallel and num_gpus % 2:
        raise UserError(f"cfg_parallel needs an even number of GPUs, got num_gpus={num_gpus}")
    start, start_wall = time.perf_counter(), time.time()
    unknown = sorted(set(load_kwargs) - set(LOAD_OPTIONS))
    if unknown:
        raise UserError(f"unknown option(s) for num_gpus={num_gpus}: {', '.join(unknown)}; "
                        f"parallel options are cfg_parallel and timeout")
    folder = resolve_repo(path_or_hub_id)  # download once, in the caller, before any rank starts
    family = family_of_repo(folder)
    check_vae_tiling(load_kwargs.get("vae_tiling"), family, family.load(family.pipeline))
    heads = transformer_setting(folder, "num_attention_heads")
    if heads is not None:  # fail before starting any rank, with the sizes that work
        check_heads(heads, num_gpus // 2 if cfg_parallel else num_gpus)
    if not isinstance(timeout, timedelta):
        timeout = timedelta(seconds=timeout)
    pool = WorkerPool(num_gpus, device=device_type, timeout=timeout)
    try:
        info = pool.run(_load, str(folder), load_kwargs, cfg_parallel)
    except BaseException:
        pool.close()
        raise
    if info is None:  # torchrun rank other than 0: defaults are the same everywhere
        info = {"defaults": pool.local_worker.state["generator"].defaults}
    parts = load_breakdown(start_wall, info["marks"], time.time()) if "marks" in info else None
    return ParallelVideoGenerator(pool, str(path_or_hub_id), info, num_gpus, cfg_parallel,
                                  load_seconds=time.perf_counter() - start, load_parts=parts)
