"""Align reference modules with native modules through the name map.

A reference module R and a native module N are aligned when the map sends exactly the parameters
under R onto exactly the parameters under N (e.g. diffusers ``blocks.3.attn1`` <-> native
``blocks.3.attn``). Where wrappers nest (diffusers ``ffn.net.0`` holds ``ffn.net.0.proj``), the
innermost modules pair first. A native module made by a ``merge`` rule (fused ``attn.qkv`` from
``to_q``/``to_k``/``to_v``) aligns with the *group* of reference modules through the ``concat``
adapter. Modules without parameters align by execution order inside an aligned parent when both
sides have the same number of them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from torch import nn
from vidport.parity.capture import Trace
from vidport.porting.namemap import NameMap


@dataclass(frozen=True)
class Pair:
    """One aligned module pair. ``ref`` has several paths when an adapter joins a group."""

    ref: tuple[str, ...]
    native: str
    adapter: str = "same"  # "same" | "concat:DIM" (reference group outputs concatenated along DIM)
    how: str = "params"  # "params" (through the map) | "order" (unparameterized, by execution order)

    @property
    def ref_name(self) -> str:
        """'blocks.0.attn1.to_{q,k,v}' for a group with a common prefix."""
        if len(self.ref) == 1:
            return self.ref[0]
        prefix = self.ref[0]
        for r in self.ref[1:]:
            while not r.startswith(prefix):
                prefix = prefix[:-1]
        return prefix + "{" + ",".join(r[len(prefix):] for r in self.ref) + "}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ref"] = list(self.ref)
        return d


def _owner(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else ""


def _under(path: str, module: str) -> bool:
    return module == "" or path == module or path.startswith(module + ".")


def _param_sets(model: nn.Module) -> dict[str, frozenset[str]]:
    """module path -> names of all parameters/persistent buffers under it."""
    names = list(model.state_dict().keys())
    out = {}
    for path, _ in model.named_modules():
        out[path] = frozenset(n for n in names if _under(n, path) and n != path)
    return out


def _depth(path: str) -> int:
    return 0 if path == "" else path.count(".") + 1


def _out_channel_dim(module: nn.Module) -> int:
    """Where a module's output features live: last dim for Linear, dim 1 for convolutions."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def align_by_params(reference: nn.Module, native: nn.Module, name_map: NameMap,
                    ref_trace: Trace | None = None, nat_trace: Trace | None = None) -> list[Pair]:
    """Pairs derived from the map. With traces, modules that were never called (containers such as a
    ModuleList, weights used functionally) give way to nested ones that were."""
    ref_sets = _param_sets(reference)
    nat_sets = _param_sets(native)
    plan = name_map.plan(ref_sets[""])
    sources_of: dict[str, tuple[str, ...]] = {op.target: op.sources for op in plan.ops}
    targets_of: dict[str, set[str]] = defaultdict(set)
    for op in plan.ops:
        for s in op.sources:
            targets_of[s].add(op.target)

    # image of each reference module; complete when every target's sources all lie under it
    by_image: dict[frozenset[str], list[str]] = defaultdict(list)
    for path, params in ref_sets.items():
        if not params:
            continue
        image = frozenset(t for p in params for t in targets_of.get(p, ()))
        if image and all(s in params for t in image for s in sources_of[t]):
            by_image[image].append(path)
    nat_by_set: dict[frozenset[str], list[str]] = defaultdict(list)
    for path, params in nat_sets.items():
        if params:
            nat_by_set[params].append(path)

    def called(paths: list[str], trace: Trace | None) -> list[str]:
        if trace is None:
            return paths
        return [p for p in paths if trace.executed(p)] or paths[:1]

    pairs: list[Pair] = []
    for params, nat_paths in nat_by_set.items():
        ref_paths = called(by_image.get(params, []), ref_trace)
        nat_paths = called(nat_paths, nat_trace)
        # innermost with innermost: wrappers without parameters of their own pair only if both sides nest
        for r, n in zip(sorted(ref_paths, key=_depth, reverse=True), sorted(nat_paths, key=_depth, reverse=True)):
            pairs.append(Pair((r,), n))

    # fused modules: every direct parameter made by a merge of parameters owned by sibling modules
    nat_modules = dict(native.named_modules())
    ref_modules = dict(reference.named_modules())
    paired_native = {p.native for p in pairs}
    for path, module in nat_modules.items():
        direct = [f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)]
        if path in paired_native or not direct or any(t not in sources_of for t in direct):
            continue
        groups = {tuple(_owner(s) for s in sources_of[t]) for t in direct}
        if len(groups) != 1:
            continue
        group = groups.pop()
        if len(group) < 2 or len(set(group)) != len(group) or not all(g in ref_modules for g in group):
            continue
        pairs.append(Pair(group, path, adapter=f"concat:{_out_channel_dim(module)}"))
    return pairs


def align(reference: nn.Module, native: nn.Module, name_map: NameMap, ref_trace: Trace,
          nat_trace: Trace) -> list[Pair]:
    """All pairs: through the map, then unparameterized modules by execution order. Pairs where
    neither side ran (containers) are left out."""
    pairs = align_by_params(reference, native, name_map, ref_trace, nat_trace)
    pairs += align_by_order(pairs, reference, native, ref_trace, nat_trace)
    return [p for p in pairs if nat_trace.executed(p.native) or all(ref_trace.executed(r) for r in p.ref)]


def align_by_order(pairs: list[Pair], reference: nn.Module, native: nn.Module,
                   ref_trace: Trace, nat_trace: Trace) -> list[Pair]:
    """Unparameterized direct children of aligned parents, paired by execution order."""
    ref_sets, nat_sets = _param_sets(reference), _param_sets(native)

    def unparam_children(model, sets, parent, trace):
        kids = [f"{parent}.{n}" if parent else n for n, _ in model.get_submodule(parent).named_children()]
        kids = [k for k in kids if not sets[k] and trace.executed(k)]
        return sorted(kids, key=trace.first_start)

    out = []
    for p in pairs:
        if len(p.ref) != 1:
            continue
        rk = unparam_children(reference, ref_sets, p.ref[0], ref_trace)
        nk = unparam_children(native, nat_sets, p.native, nat_trace)
        if rk and len(rk) == len(nk):
            out += [Pair((r,), n, how="order") for r, n in zip(rk, nk)]
    return out


def combine(ref_outputs: list[torch.Tensor], adapter: str) -> torch.Tensor:
    """Apply a pair's adapter to the reference side's outputs."""
    if adapter == "same":
        return ref_outputs[0]
    if adapter.startswith("concat:"):
        return torch.cat(ref_outputs, dim=int(adapter.split(":", 1)[1]))
    raise ValueError(f"unknown adapter {adapter!r}")
