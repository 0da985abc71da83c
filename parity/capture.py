"""Capture module outputs (and inputs) with forward hooks, without touching the model's code."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


def first_tensor(obj) -> torch.Tensor | None:
    """The tensor an output or argument list stands for: itself, the first tensor of a tuple/list,
    of a dict / ModelOutput (``sample``, ``last_hidden_state``, ...), or of a dataclass. A *list* of
    same-shaped tensors is a batch given as samples (official codebases pass and return videos as lists of
    [C, F, H, W]): it stands for their stack, so it compares with a batched tensor."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, list) and obj and all(isinstance(t, torch.Tensor) for t in obj) \
            and len({t.shape for t in obj}) == 1:
        return torch.stack(obj)
    if isinstance(obj, (tuple, list)):
        items = obj
    elif isinstance(obj, Mapping):
        items = obj.values()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "latent_dist"):  # diffusers AutoencoderKLOutput
        return obj.latent_dist.mode()
    elif hasattr(obj, "mode") and hasattr(obj, "mean"):  # a DiagonalGaussianDistribution
        return obj.mode()
    else:
        return None
    for item in items:
        t = first_tensor(item)
        if t is not None:
            return t
    return None


@dataclass
class Call:
    """One forward call of one module: its order of completion, output and first tensor input."""

    path: str
    index: int  # 0 for the module's first call, 1 for its second...
    order: int  # global completion order within the run
    start: int  # global start order within the run
    output: torch.Tensor | None
    input: torch.Tensor | None


@dataclass
class Trace:
    """Everything one run recorded: calls in completion order, and per-module call lists."""

    calls: list[Call] = field(default_factory=list)
    by_path: dict[str, list[Call]] = field(default_factory=dict)

    def first_start(self, path: str) -> int:
        calls = self.by_path.get(path)
        return calls[0].start if calls else -1

    def executed(self, path: str) -> bool:
        return bool(self.by_path.get(path))


class Recorder:
    """Hooks every module of ``model`` (or only ``paths``); use as a context manager around a run.

    Outputs and inputs are detached copies (in-place ops later in the forward cannot change them),
    moved to ``store_device`` when given (e.g. "cpu" to keep GPU memory free).
    """

    def __init__(self, model: nn.Module, paths: set[str] | None = None, *, store_device: str | None = None,
                 keep_inputs: bool = True):
        self.model, self.paths, self.store_device, self.keep_inputs = model, paths, store_device, keep_inputs
        self.trace = Trace()
        self._handles: list = []
        self._starts: dict[str, list[int]] = {}
        self._counter = 0

    def _copy(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        return t.to(self.store_device, copy=True) if self.store_device else t.clone()

    def __enter__(self) -> Recorder:
        for path, module in self.model.named_modules():
            if self.paths is not None and path not in self.paths:
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(path)))
            self._handles.append(module.register_forward_hook(self._hook(path), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre_hook(self, path: str):
        def hook(module, args):
            self._starts.setdefault(path, []).append(self._counter)
            self._counter += 1
        return hook

    def _hook(self, path: str):
        def hook(module, args, kwargs, output):
            calls = self.trace.by_path.setdefault(path, [])
            start = self._starts[path].pop()
            inp = None
            if self.keep_inputs:
                inp = first_tensor(args)
                if inp is None:
                    inp = first_tensor(kwargs)
            call = Call(path, len(calls), len(self.trace.calls), start, self._copy(first_tensor(output)),
                        self._copy(inp))
            calls.append(call)
            self.trace.calls.append(call)
        return hook
