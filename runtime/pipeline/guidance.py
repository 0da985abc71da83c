"""Classifier-free guidance strategies: how the conditional and unconditional predictions are made.

A strategy is called as ``strategy(model, x, timestep, cond, uncond, guidance_scale)`` and returns the
guided noise prediction in fp32. ``cond``/``uncond`` are ``Conditioning`` objects (the family's keyword
arguments of the denoiser: a context, a text mask, pooled embeddings...); ``model`` is any module with
``forward(x, timestep, **cond.kwargs) -> noise`` (a family's native DiT or a sequence-parallel wrapper
with the same signature). ``uncond`` is None when guidance is off (scale 1): then exactly one forward runs.

The guidance itself is computed in fp32 like the official samplers (their models return fp32); with an
fp32 model this is the same arithmetic as diffusers' pipelines. Strategies are chosen by name
(``get_cfg_strategy``) or passed as objects, so ``runtime.parallel`` can add one (e.g. CFG-parallel,
where two ranks each run one branch and exchange the predictions) without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from vidport.runtime.pipeline.state import Conditioning, drop_common_padding

from vidport.errors import UserError

Denoiser = Callable[..., torch.Tensor]  # model(x, timestep, **cond.kwargs) -> noise prediction


class CFGStrategy(Protocol):
    name: str
    # True when the two branches' conditionings run as one batch (so they need one text length); a strategy
    # without the attribute counts as joining them
    joins_branches: bool

    def __call__(self, model: Denoiser, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                 uncond: Conditioning | None, guidance_scale: float) -> torch.Tensor: ...


def combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """uncond + s * (cond - uncond), in fp32."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + guidance_scale * (cond - uncond)


class SerialCFG:
    """Two forward calls per step, conditional first (the order diffusers and the official code use)."""

    name = "serial"
    joins_branches = False

    def __call__(self, model, x, timestep, cond, uncond, guidance_scale):
        pred = model(x, timestep, **cond.kwargs)
        if uncond is None:
            return pred.float()
        return combine(pred, model(x, timestep, **uncond.kwargs), guidance_scale)


class BatchedCFG:
    """One forward call on a batch of [cond, uncond]: fewer kernel launches, twice the activations.
    ``uncond_first``: the batch as [uncond, cond] (a reference pipeline's order, for layer-by-layer parity)."""

    name = "batched"
    joins_branches = True
    uncond_first = False

    def __call__(self, model, x, timestep, cond, uncond, guidance_scale):
        if uncond is None:
            return model(x, timestep, **cond.kwargs).float()
        first, second = (uncond, cond) if self.uncond_first else (cond, uncond)
        pred_first, pred_second = model(torch.cat([x, x]), torch.cat([timestep, timestep]),
                                        **first.cat(second).kwargs).chunk(2)
        pred_cond, pred_uncond = (pred_second, pred_first) if self.uncond_first else (pred_first, pred_second)
        return combine(pred_cond, pred_uncond, guidance_scale)


def without_padding(cfg: CFGStrategy, cond: Conditioning, uncond: Conditioning | None, sequence: str,
                    mask: str) -> tuple[Conditioning, Conditioning | None]:
    """(cond, uncond) without their text padding (``drop_common_padding``): cut together when ``cfg`` runs the
    branches as one batch (``joins_branches``: both keep the longer one's length, and a mask where one is shorter),
    each to its own real length otherwise (then no mask is left)."""
    if getattr(cfg, "joins_branches", True):
        return tuple(drop_common_padding([cond, uncond], sequence, mask))
    return tuple(drop_common_padding([c], sequence, mask)[0] for c in (cond, uncond))


CFG_STRATEGIES: dict[str, type] = {"serial": SerialCFG, "batched": BatchedCFG}


def get_cfg_strategy(cfg: str | CFGStrategy) -> CFGStrategy:
    """A strategy by name (``serial``, ``batched``), or the given strategy object unchanged."""
    if not isinstance(cfg, str):
        return cfg
    try:
        return CFG_STRATEGIES[cfg]()
    except KeyError:
        raise UserError(f"unknown CFG strategy {cfg!r}; choose one of: {', '.join(CFG_STRATEGIES)}") from None
