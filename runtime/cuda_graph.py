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
    """``CUDAGraphed(module)(*tensors)`` equals ``module(*tensors)``, replayed from a CUDA graph captured
    per signature (shape and dtype of each positional tensor). ``warmup`` eager calls precede a capture
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

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        device = next(self.module.parameters()).device
        if device.type != "cuda":
            raise UserError(f"CUDA graphs need the model on a CUDA device, it is on {device}; "
                            "drop the CUDA-graph option on this device")
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"CUDAGraphed takes tensors only; argument {i} is {type(a).__name__}")
        key = tuple((tuple(a.shape), a.dtype) for a in args) + (torch.is_grad_enabled(),)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(args, device)
        graph, inputs, output = entry
        for dst, src in zip(inputs, args):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return output.clone()

    def _capture(self, args, device):
        inputs = [torch.empty(a.shape, dtype=a.dtype, device=device) for a in args]
        for dst, src in zip(inputs, args):
            dst.copy_(src)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.module(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.module(*inputs)
        return graph, inputs, output
