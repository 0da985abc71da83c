"""Replay a model's whole forward as one CUDA graph: no per-kernel launch cost, no gaps between kernels.

A denoising loop calls the DiT with the same shapes at every step (and for both guidance branches), so
one graph per input signature is captured on first use and replayed after: inputs are copied into the
graph's static buffers, the graph runs, and a copy of its output is returned (the next replay reuses the
output buffer). What a capture freezes, and so what invalidates it:

- the module's parameters are read from their current memory: in-place weight updates are seen,
  replacing a parameter's tensor (``p.data = ...``) is not. Call ``reset()`` after such a change;
- the kernels chosen at capture time: ``set_attention_backend`` resets the graphs itself;
- host-side control flow: the forward must not sync with the host or branch on tensor values (the
  native DiT does neither; the denoising loop's scheduler runs outside the graph).
"""

from __future__ import annotations

import torch
from torch import nn

from vidport.errors import UserError


class CUDAGraphed(nn.Module):
    """``CUDAGraphed(module)(*args, **kwargs)`` equals ``module(*args, **kwargs)``, replayed from a CUDA graph
    captured per signature (shape and dtype of each tensor argument, the value of every other one). ``warmup``
    eager calls precede a capture
    (JIT kernels, cuDNN plans and cached tables are built outside the graph)."""

    def __init__(self, module: nn.Module, warmup: int = 1):
        super().__init__()
        self.module = module
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self._pool = None

    # the pipeline reads these from its transformer
    @property
    def cfg(self):
        return self.module.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    def set_attention_backend(self, *backends: str) -> None:
        self.module.set_attention_backend(*backends)
        self.reset()

    def reset(self) -> None:
        """Drop every captured graph (and its memory); the next call captures again."""
        self._graphs.clear()
        self._pool = None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        device = next(self.module.parameters()).device
        if device.type != "cuda":
            raise UserError(f"CUDA graphs need the model on a CUDA device, it is on {device}; "
                            "drop the CUDA-graph option on this device")
        names = list(range(len(args))) + sorted(kwargs)
        values = list(args) + [kwargs[k] for k in sorted(kwargs)]
        # tensors are copied into the graph's buffers; anything else (grid sizes, RoPE scales) is frozen into the
        # capture, so it is part of the signature
        key = (len(args), tuple(sorted(kwargs)), tuple(
            (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else ("static", _frozen(n, v))
            for n, v in zip(names, values)), torch.is_grad_enabled())
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(names, values, len(args), device)
        graph, inputs, output = entry
        for dst, src in zip(inputs, [v for v in values if isinstance(v, torch.Tensor)]):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return output.clone()

    def _capture(self, names, values, n_args, device):
        inputs = [torch.empty(v.shape, dtype=v.dtype, device=device) for v in values if isinstance(v, torch.Tensor)]
        buffers = iter(inputs)
        call = [next(buffers) if isinstance(v, torch.Tensor) else v for v in values]
        for dst, src in zip(inputs, [v for v in values if isinstance(v, torch.Tensor)]):
            dst.copy_(src)
        args, kwargs = call[:n_args], dict(zip(names[n_args:], call[n_args:]))
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.module(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.module(*args, **kwargs)
        return graph, inputs, output


def _frozen(name, value):
    """A hashable form of a non-tensor argument (lists become tuples); a TypeError naming it otherwise."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(name, v) for v in value)
    if isinstance(value, torch.Tensor):
        raise TypeError(f"CUDAGraphed: argument {name!r} holds a tensor inside a sequence; pass tensors directly")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"CUDAGraphed: argument {name!r} ({type(value).__name__}) is neither a tensor nor "
                        "hashable") from None
    return value
