r"""Compress key-by-key correspondences into a few ordered regex rules (a NameMap).

1. Each correspondence becomes a literal rule over dotted segments.
2. Rules that differ only in their numbers become one rule: a number the target keeps is captured
   (``blocks\.(\d+)`` -> ``blocks.\1``); one that maps irregularly (Wan VAE ``upsamples.5`` ->
   ``up_blocks.1.resnets.1``) splits the rule by that number, one rule per index.
3. Rules that differ in one source segment that reappears inside one target segment become one rule
   with an alternation (``(weight|bias)``, ``(q|k|v)`` -> ``to_\2``).

Every step is exact: the rules map precisely the keys they were made from, and ``build_map`` checks the
result against the correspondences before returning it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vidport.porting.infer import Correspondence, differing_span
from vidport.porting.namemap import NameMap, NameMapError, Rule

# a source segment: ("lit", text) | ("cap", values or None for \d+) | ("part", pre, parts, post)
# a target segment: tuple of pieces; a piece is text or an int (the source segment it copies) or
# the string "{part}" (split rules)
PART = "{part}"


@dataclass
class _Rule:
    kind: str
    opts: tuple  # (parts, dim, shape, from_shape, sizes, perm)
    src: list[tuple]
    tgts: list[list[tuple]]
    first: int  # position of the first source key it came from

    def key_without(self, i: int, j: tuple[int, int], pre: str = "", post: str = "", *, inside: bool = False) -> tuple:
        """This rule with source segment i and target segment j blanked: rules with equal keys differ
        only in the value that the target copies. ``inside``: the value is part of the source segment
        (``to_q`` -> ``q``); otherwise part of the target segment (``q`` -> ``to_q``)."""
        blank_s, blank_t = (("*in", pre, post), ("*",)) if inside else (("*",), ("*", pre, post))
        src = tuple(blank_s if k == i else s for k, s in enumerate(self.src))
        tgts = tuple(tuple(blank_t if (a, b) == j else seg for b, seg in enumerate(t)) for a, t in enumerate(self.tgts))
        return (self.kind, self.opts, src, tgts)


def _split_part(seg: str, part: str) -> tuple[str, str]:
    i = seg.index(part)
    return seg[:i], seg[i + len(part):]


def _fused_segments(keys: Sequence[str], parts: Sequence[str]) -> tuple[list[str], int, int, str, str]:
    """Where the pieces of a merge/split differ: (first key's segments, start, end, pre, post) such that each
    key's segments [start:end] read ``pre + part + post``. Usually one segment (``to_q``); a fusion across
    modules differs in several (``attn.to_q`` vs ``proj_mlp``), and then the part is those whole segments."""
    segs = [k.split(".") for k in keys]
    if len({len(s) for s in segs}) == 1:
        diff = [i for i in range(len(segs[0])) if len({s[i] for s in segs}) > 1]
        if len(diff) == 1:
            pre, post = _split_part(segs[0][diff[0]], parts[0])
            return segs[0], diff[0], diff[0] + 1, pre, post
    head, tail = differing_span(keys)
    if any(".".join(s[head:len(s) - tail]) != p for s, p in zip(segs, parts)):
        raise ValueError(f"parts {list(parts)} do not spell where {list(keys)} differ")
    return segs[0], head, len(segs[0]) - tail, "", ""


def _literal_rule(c: Correspondence, first: int) -> _Rule:
    opts = (c.parts, c.dim, c.shape, c.from_shape, c.sizes, c.perm)
    if c.kind == "merge":
        segs, i, j, pre, post = _fused_segments(c.sources, c.parts)
        src = [("lit", x) for x in segs[:i]] + [("part", pre, c.parts, post)] + [("lit", x) for x in segs[j:]]
        return _Rule(c.kind, opts, src, [[(x,) for x in c.targets[0].split(".")]], first)
    src = [("lit", x) for x in c.sources[0].split(".")]
    if c.kind == "split":
        segs, i, j, pre, post = _fused_segments(c.targets, c.parts)
        tgt = [(x,) for x in segs[:i]] + [(pre, PART, post) if pre or post else (PART,)] + [(x,) for x in segs[j:]]
        return _Rule(c.kind, opts, src, [tgt], first)
    return _Rule(c.kind, opts, src, [[(x,) for x in t.split(".")] for t in c.targets], first)


# ----------------------------------------------------------------------------------------------
# step 2: numbers
# ----------------------------------------------------------------------------------------------
_NUMBERED_SEG = re.compile(r"([A-Za-z_]*)(\d+)")


def _number(seg: tuple) -> tuple[str, str] | None:
    """(text before, number) of a literal source segment that ends in a number (``7``, ``block7``), else None."""
    m = _NUMBERED_SEG.fullmatch(seg[1]) if seg[0] == "lit" else None
    return (m.group(1), m.group(2)) if m else None


def _skeleton(r: _Rule) -> tuple:
    def s(seg):
        num = _number(seg)
        if num:
            return num[0] + "#"
        return seg[1] if seg[0] == "lit" else seg

    def t(seg):
        return tuple("#" if isinstance(p, str) and p.isdigit() else p for p in seg)

    return (r.kind, r.opts, tuple(s(x) for x in r.src), tuple(tuple(t(x) for x in tg) for tg in r.tgts))


def _numeric_groups(rules: list[_Rule]) -> list[_Rule]:
    groups: dict[tuple, list[_Rule]] = defaultdict(list)
    for r in rules:
        groups[_skeleton(r)].append(r)
    out: list[_Rule] = []
    for members in groups.values():
        out.extend(_generalize_numbers(members))
    # a captured \d+ may stay open only where no other rule of the same source skeleton could match
    by_src: dict[tuple, list[_Rule]] = defaultdict(list)
    for r in out:
        by_src[tuple(_number(s)[0] + "#" if _number(s) else s[1] if s[0] == "lit" else
                     s[1] + "#" if s[0] == "capin" and s[2] is None else "#" for s in r.src)].append(r)
    for same in by_src.values():
        for r in same:
            others = [o for o in same if o is not r]
            if all(_disjoint(r, o) for o in others):
                continue
            for k, seg in enumerate(r.src):
                if seg[0] == "cap" and seg[1] is None:
                    r.src[k] = ("cap", tuple(r._values[k]))  # type: ignore[attr-defined]
                elif seg[0] == "capin" and seg[2] is None:
                    r.src[k] = ("capin", seg[1], tuple(r._values[k]), seg[3])  # type: ignore[attr-defined]
    return out


def _disjoint(a: _Rule, b: _Rule) -> bool:
    """True when a literal number tells the two rules' keys apart."""
    return any(x[0] == y[0] == "lit" and x[1] != y[1] for x, y in zip(a.src, b.src))


def _generalize_numbers(members: list[_Rule]) -> list[_Rule]:
    base = members[0]
    src_num = [i for i, s in enumerate(base.src) if _number(s)]
    tgt_num = [(a, b) for a, t in enumerate(base.tgts) for b, seg in enumerate(t)
               if len(seg) == 1 and isinstance(seg[0], str) and seg[0].isdigit()]

    def sv(r, i):
        return _number(r.src[i])[1]

    def tv(r, q):
        return r.tgts[q[0]][q[1]][0]

    if len(members) == 1:
        return [base]
    refs: dict[tuple[int, int], int] = {}
    bad = []
    for q in tgt_num:
        if len({tv(r, q) for r in members}) == 1:
            continue  # the same number everywhere stays literal
        hit = next((p for p in src_num if all(tv(r, q) == sv(r, p) for r in members)), None)
        if hit is not None:
            refs[q] = hit
        else:
            bad.append(q)
    unref_varying = [p for p in src_num if p not in refs.values() and len({sv(r, p) for r in members}) > 1]
    if bad or unref_varying:
        # split by the source number that determines the irregular target numbers
        for p in src_num:
            if p in refs.values():
                continue
            by_val: dict[str, list[_Rule]] = defaultdict(list)
            for r in members:
                by_val[sv(r, p)].append(r)
            if len(by_val) > 1 and all(len({tv(r, q) for r in g}) == 1 for g in by_val.values() for q in bad):
                out = []
                for g in by_val.values():
                    out.extend(_generalize_numbers(g))
                return out
        return list(members)  # no regularity: one literal rule each
    rule = _Rule(base.kind, base.opts, list(base.src), [list(t) for t in base.tgts], min(r.first for r in members))
    rule._values = {}  # type: ignore[attr-defined]
    for p in set(refs.values()):
        prefix = _number(base.src[p])[0]
        rule.src[p] = ("capin", prefix, None, "") if prefix else ("cap", None)  # block(\d+) or (\d+)
        rule._values[p] = sorted({sv(r, p) for r in members}, key=int)  # type: ignore[attr-defined]
    for q, p in refs.items():
        rule.tgts[q[0]][q[1]] = (p,)
    return [rule]


# ----------------------------------------------------------------------------------------------
# step 3: alternations
# ----------------------------------------------------------------------------------------------
def _alternation_keys(r: _Rule):
    """(key, i, j, values, pre, post, inside) for each way this rule could join an alternation."""
    for i, seg in enumerate(r.src):
        for a, t in enumerate(r.tgts):
            for b, tseg in enumerate(t):
                if seg[0] == "lit" and not seg[1].isdigit():
                    if len(tseg) != 1 or not isinstance(tseg[0], str) or tseg[0] == PART:
                        continue
                    value, whole = seg[1], tseg[0]
                    for m in re.finditer(re.escape(value), whole):  # q -> to_q
                        pre, post = whole[:m.start()], whole[m.end():]
                        yield r.key_without(i, (a, b), pre, post), i, (a, b), (value,), pre, post, False
                    if whole != value and whole and not whole.isdigit():  # to_q -> q
                        for m in re.finditer(re.escape(whole), value):
                            pre, post = value[:m.start()], value[m.end():]
                            yield r.key_without(i, (a, b), pre, post, inside=True), i, (a, b), (whole,), pre, \
                                post, True
                elif seg[0] == "cap" and seg[1] is not None and i in tseg:
                    k = tseg.index(i)
                    pre, post = "".join(tseg[:k]), "".join(tseg[k + 1:])
                    yield r.key_without(i, (a, b), pre, post), i, (a, b), seg[1], pre, post, False
                elif seg[0] == "capin" and seg[2] is not None and tseg == (i,):
                    _, pre, values, post = seg
                    yield r.key_without(i, (a, b), pre, post, inside=True), i, (a, b), values, pre, post, True


def _alternations(rules: list[_Rule]) -> list[_Rule]:
    rules = list(rules)
    while True:
        groups: dict[tuple, list[tuple]] = defaultdict(list)
        for r in rules:
            for key, *rest in _alternation_keys(r):
                groups[key].append((r, *rest))
        best = None
        for key, items in groups.items():
            distinct = {id(x[0]) for x in items}
            if len(distinct) >= 2 and (best is None or len(distinct) > len(best[1])):
                best = (key, {id(x[0]): x for x in items})
        if best is None:
            return rules
        items = sorted(best[1].values(), key=lambda x: x[0].first)
        r0, i, (a, b), _, pre, post, inside = items[0]
        values: list[str] = []
        for x in items:
            for v in x[3]:
                if v not in values:
                    values.append(v)
        merged = _Rule(r0.kind, r0.opts, list(r0.src), [list(t) for t in r0.tgts], r0.first)
        if inside:
            merged.src[i] = ("capin", pre, tuple(values), post)
            merged.tgts[a][b] = (i,)
        else:
            merged.src[i] = ("cap", tuple(values))
            merged.tgts[a][b] = tuple(p for p in (pre, i, post) if p != "")
        gone = {id(x[0]) for x in items}
        rules = [r for r in rules if id(r) not in gone] + [merged]


# ----------------------------------------------------------------------------------------------
# emitting regex text
# ----------------------------------------------------------------------------------------------
def _emit(r: _Rule) -> Rule:
    pattern, group_of, n = [], {}, 0
    for k, seg in enumerate(r.src):
        if seg[0] == "lit":
            pattern.append(re.escape(seg[1]))
        elif seg[0] == "cap":
            n += 1
            group_of[k] = n
            pattern.append(r"(\d+)" if seg[1] is None else "(" + "|".join(re.escape(v) for v in seg[1]) + ")")
        elif seg[0] == "capin":
            n += 1
            group_of[k] = n
            _, pre, values, post = seg
            alternatives = r"\d+" if values is None else "|".join(re.escape(v) for v in values)
            pattern.append(re.escape(pre) + "(" + alternatives + ")" + re.escape(post))
        else:
            n += 1
            _, pre, parts, post = seg
            pattern.append(re.escape(pre) + "(?P<part>" + "|".join(re.escape(p) for p in parts) + ")"
                           + re.escape(post))
    used = {p for t in r.tgts for seg in t for p in seg if isinstance(p, int)}
    caps = set(group_of)
    if caps - used:  # a captured segment the target does not copy: keep it literal-free but reversible
        raise NameMapError(f"internal: capture without use in {r.src}")
    reps = []
    for t in r.tgts:
        text = []
        for seg in t:
            piece = ""
            for idx, p in enumerate(seg):
                if isinstance(p, int):
                    nxt = seg[idx + 1] if idx + 1 < len(seg) else ""
                    g = group_of[p]
                    piece += f"\\g<{g}>" if isinstance(nxt, str) and nxt[:1].isdigit() else f"\\{g}"
                else:
                    piece += p
            text.append(piece)
        reps.append(".".join(text))
    parts, dim, shape, from_shape, sizes, perm = r.opts
    return Rule(r.kind, "^" + r"\.".join(pattern) + "$", tuple(reps), parts=tuple(parts), dim=dim,
                shape=shape, from_shape=from_shape, sizes=sizes, perm=perm)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def build_map(correspondences: Sequence[Correspondence], source_keys: Iterable[str], *,
              source: str = "", target: str = "") -> NameMap:
    """Ordered regex rules equivalent to ``correspondences`` on ``source_keys`` (checked)."""
    order = {k: i for i, k in enumerate(source_keys)}

    def literal():
        return [_literal_rule(c, min(order.get(s, 0) for s in c.sources)) for c in correspondences]

    rules = _alternations(_numeric_groups(literal()))
    rules.sort(key=lambda r: r.first)
    name_map = NameMap([_emit(r) for r in rules], source=source, target=target)
    try:
        _check(name_map, correspondences, order)
    except NameMapError:  # never expected; one literal rule per correspondence is always exact
        name_map = NameMap([_emit(r) for r in sorted(literal(), key=lambda r: r.first)], source=source,
                           target=target)
        _check(name_map, correspondences, order)
    return name_map


def _check(name_map: NameMap, correspondences: Sequence[Correspondence], order: dict[str, int]) -> None:
    used = {s for c in correspondences for s in c.sources}
    plan = name_map.plan([k for k in order if k in used])
    got = {(op.target, op.sources) for op in plan.ops}
    want = set()
    for c in correspondences:
        if c.kind == "merge":
            want.add((c.targets[0], c.sources))
        else:
            want |= {(t, c.sources) for t in c.targets}
    if got != want or plan.unmatched:
        extra, lost = sorted(got - want)[:3], sorted(want - got)[:3]
        raise NameMapError(f"internal: generalized rules disagree with the inference (extra {extra}, lost {lost})")
