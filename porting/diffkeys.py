"""Diff two state-dict layouts by name and shape, infer the name map between them, and report both."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vidport.porting.generalize import build_map
from vidport.porting.infer import Correspondence, Inference, differing_span, infer
from vidport.porting.namemap import NameMap
from vidport.porting.sources import StateDictSource


@dataclass
class KeyDiff:
    source: str
    target: str
    n_source: int
    n_target: int
    matched: list[str]  # same name, same shape on both sides
    missing: list[str]  # target names the source lacks
    unexpected: list[str]  # source names the target lacks
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    inference: Inference
    name_map: NameMap
    unmapped_source: list[str]  # after applying the map
    unfilled_target: list[str]
    seconds: float

    @property
    def complete(self) -> bool:
        return not self.unmapped_source and not self.unfilled_target and not self.inference.unresolved

    def row_order_warnings(self) -> list[dict]:
        """Renames of modulation-like tensors whose rows could be chunks in another order: check them
        (names and shapes cannot see a swap; --match-values can)."""
        return [{"source": c.sources[0], "target": c.targets[0], "chunks": c.row_order}
                for c in self.inference.correspondences if c.row_order]

    def part_order_warnings(self) -> list[dict]:
        """Fusions across modules whose part order is the attention convention (q, k, v, then the other part),
        not evidence: check them (--match-values, or parity, decides)."""
        return [{"sources": list(c.sources), "targets": list(c.targets), "parts": list(c.parts)}
                for c in self.inference.correspondences if c.by_convention]

    def evidence_counts(self) -> dict[str, int]:
        """How many target tensors each kind of evidence decided."""
        counts: dict[str, int] = {}
        for c in self.inference.correspondences:
            counts[c.evidence] = counts.get(c.evidence, 0) + len(c.targets)
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict:
        mapped = self.inference.mapped()
        return {
            "source": self.source, "target": self.target,
            "counts": {"source": self.n_source, "target": self.n_target, "matched": len(self.matched),
                       "missing": len(self.missing), "unexpected": len(self.unexpected),
                       "shape_mismatch": len(self.shape_mismatch), "rules": len(self.name_map.rules),
                       "mapped": len(mapped), "unresolved": len(self.inference.unresolved)},
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": [{"key": k, "source": list(a), "target": list(b)} for k, a, b in self.shape_mismatch],
            "rules": [[r.pattern, None if r.kind == "drop" else ",".join(r.replacements)]
                      for r in self.name_map.rules],
            "rule_lines": [r.to_line() for r in self.name_map.rules],
            "transforms": [c.to_json() for c in self.inference.correspondences if c.kind != "rename"],
            "unresolved": [u.to_json() for u in self.inference.unresolved],
            "mapped": mapped,
            "decided_by_key_order": sum(c.by_order for c in self.inference.correspondences),
            "evidence": {t: c.evidence for c in self.inference.correspondences for t in c.targets},
            "evidence_counts": self.evidence_counts(),
            "row_order_warnings": self.row_order_warnings(),
            "part_order_warnings": self.part_order_warnings(),
            "unmapped_source": self.unmapped_source,
            "unfilled_target": self.unfilled_target,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }


def value_correspondences(source: StateDictSource, target: StateDictSource) -> list[Correspondence]:
    """What equal contents decide (``porting.values``), as correspondences the map can state."""
    from vidport.porting.values import fingerprints, match_values

    out = []
    s_shapes, t_shapes = source.shapes(), target.shapes()
    for v in match_values(fingerprints(source), fingerprints(target)):
        if v.kind in ("rename", "reorder"):
            out.append(Correspondence("rename", v.sources, v.targets, perm=v.perm or None, by_values=True))
        elif v.kind == "reshape":
            out.append(Correspondence("reshape", v.sources, v.targets, shape=tuple(t_shapes[v.targets[0]]),
                                      from_shape=tuple(s_shapes[v.sources[0]]), by_values=True))
        elif v.kind == "tie":
            out.append(Correspondence("tie", v.sources, v.targets, by_values=True))
        else:  # split / merge: the parts are the one dotted segment the pieces differ in
            pieces = v.targets if v.kind == "split" else v.sources
            parts = _differing_segment(pieces)
            if parts is not None:
                sizes = None if len(set(v.sizes)) == 1 else tuple(v.sizes)
                out.append(Correspondence(v.kind, v.sources, v.targets, parts=parts, dim=0, sizes=sizes,
                                          by_values=True))
    return out


def _differing_segment(keys) -> tuple[str, ...] | None:
    """What tells the pieces of a split/merge apart: the one dotted segment they differ in (``to_q``, ``to_k``),
    or, for pieces in different modules (``attn.to_q``, ``proj_mlp``), the segments between their common head
    and tail."""
    segs = [k.split(".") for k in keys]
    if len({len(s) for s in segs}) == 1:
        diff = [i for i in range(len(segs[0])) if len({s[i] for s in segs}) > 1]
        if len(diff) == 1:
            return tuple(s[diff[0]] for s in segs)
    head, tail = differing_span(keys)
    parts = tuple(".".join(s[head:len(s) - tail]) for s in segs)
    return parts if all(parts) and len(set(parts)) == len(parts) else None


def diff_keys(source: StateDictSource, target: StateDictSource, *, match_values: bool = False) -> KeyDiff:
    """Name/shape diff plus the inferred map (names, shapes, dtypes and key order; with ``match_values``,
    equal tensor contents first, when both sides hold real tensors)."""
    t0 = time.perf_counter()
    s_shapes, t_shapes = source.shapes(), target.shapes()
    matched = [k for k in s_shapes if k in t_shapes and tuple(s_shapes[k]) == tuple(t_shapes[k])]
    mismatch = [(k, tuple(s_shapes[k]), tuple(t_shapes[k])) for k in s_shapes
                if k in t_shapes and tuple(s_shapes[k]) != tuple(t_shapes[k])]
    missing = [k for k in t_shapes if k not in s_shapes]
    unexpected = [k for k in s_shapes if k not in t_shapes]
    decided = value_correspondences(source, target) if match_values else []
    inference = infer(source.infos, target.infos, decided)
    name_map = build_map(inference.correspondences, source.keys(), source=source.description,
                         target=target.description)
    plan = name_map.plan(source.keys())
    produced = {op.target for op in plan.ops}
    used = {s for op in plan.ops for s in op.sources}
    return KeyDiff(source.description, target.description, len(s_shapes), len(t_shapes), matched, missing,
                   unexpected, mismatch, inference, name_map,
                   [k for k in s_shapes if k not in used and k not in plan.dropped],
                   [k for k in t_shapes if k not in produced], time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# the readable report
# ----------------------------------------------------------------------------------------------
def _listing(title: str, items: list[str], limit: int) -> list[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"]
    lines += [f"  {x}" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (--json lists all)")
    return lines


def format_report(d: KeyDiff, *, limit: int = 12) -> str:
    inf = d.inference
    lines = [
        f"source: {d.source}  ({d.n_source} tensors{'' if inf.source_order_informative else ', alphabetical order'})",
        f"target: {d.target}  ({d.n_target} tensors{'' if inf.target_order_informative else ', alphabetical order'})",
        "",
        "by name:",
        f"  matched (same name and shape): {len(d.matched)}",
        f"  missing in source:             {len(d.missing)}",
        f"  unexpected in source:          {len(d.unexpected)}",
        f"  same name, other shape:        {len(d.shape_mismatch)}",
    ]
    lines += ["  " + x for x in _listing("missing", d.missing, limit)]
    lines += ["  " + x for x in _listing("unexpected", d.unexpected, limit)]
    lines += ["  " + x for x in _listing("shape mismatch",
                                          [f"{k}: {list(a)} vs {list(b)}" for k, a, b in d.shape_mismatch], limit)]
    kinds: dict[str, int] = {}
    for c in inf.correspondences:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    by_order = sum(c.by_order for c in inf.correspondences)
    lines += ["", f"inferred map: {len(d.name_map.rules)} rules, "
              + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
              + (f"; {by_order} decided by key order" if by_order else "")
              + f" ({d.seconds:.2f} s)"]
    lines += ["  decided by: " + ", ".join(f"{k} {n}" for k, n in d.evidence_counts().items())]
    lines += ["  " + r.to_line() for r in d.name_map.rules]
    transforms = [c for c in inf.correspondences if c.kind != "rename"]
    lines += _listing("transforms", [f"{c.kind}: {', '.join(c.sources)} -> {', '.join(c.targets)}"
                                     + (f" (parts {','.join(c.parts)}, dim {c.dim})" if c.parts else "")
                                     + (f" (shape {list(c.from_shape)} -> {list(c.shape)})" if c.shape else "")
                                     for c in transforms], limit)
    warnings = d.row_order_warnings()
    lines += _listing("check row order (a modulation table's chunks may be swapped; --match-values decides)",
                      [f"{w['source']} -> {w['target']} ({w['chunks']} chunks)" for w in warnings], limit)
    lines += _listing("check part order (fused across modules; q, k, v then the rest by convention; "
                      "--match-values decides)",
                      [f"{', '.join(w['sources'])} -> {', '.join(w['parts'])}" for w in d.part_order_warnings()],
                      limit)
    if inf.unresolved:
        lines += ["", f"unresolved ({len(inf.unresolved)}):"]
        for u in inf.unresolved[:limit]:
            cands = ", ".join(u.candidates[:6]) + (" ..." if len(u.candidates) > 6 else "")
            lines.append(f"  {u.side} {u.key}: {u.reason}" + (f"; candidates: {cands}" if cands else ""))
        if len(inf.unresolved) > limit:
            lines.append(f"  ... and {len(inf.unresolved) - limit} more (--json lists all)")
    lines += [""]
    if d.complete:
        lines.append(f"complete: all {d.n_source} source tensors map onto all {d.n_target} target tensors")
    else:
        lines.append(f"incomplete: {len(d.unmapped_source)} source tensors unmapped, "
                     f"{len(d.unfilled_target)} target tensors unfilled")
    return "\n".join(lines)
