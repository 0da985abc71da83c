r"""NameMap: an ordered table of regex rules plus declared tensor transforms, stored as a text file.

File format (one rule a line, ``#`` starts a comment, fields separated by spaces)::

    # vidport name map v1
    # source: diffusers WanTransformer3DModel
    # target: vidport WanDiT
    rename  ^blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)$  ->  blocks.\1.attn.proj.\2
    drop    ^text_encoder_unused\..*$
    merge   ^blocks\.(\d+)\.attn1\.to_(?P<part>q|k|v)\.(weight|bias)$  ->  blocks.\1.attn.qkv.\3  parts=q,k,v dim=0
    split   ^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$  ->  blocks.\1.attn1.to_{part}.\2  parts=q,k,v dim=0
    tie     ^token_embedding\.weight$  ->  shared.weight,encoder.embed_tokens.weight
    reshape ^x\.weight$  ->  y.weight  shape=6,1536 from=1,6,1536

Rules apply in order; the first rule whose pattern matches a source key decides its fate.
``drop`` means "not used, on purpose". ``merge`` concatenates the source tensors named by the
``part`` group, in ``parts`` order, along ``dim``; ``split`` is its inverse; ``tie`` feeds one
source tensor to several targets. ``reverse()`` derives the opposite map: it is never written twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.errors import UserError

if TYPE_CHECKING:
    import torch

KINDS = ("rename", "drop", "merge", "split", "tie", "reshape")
HEADER = "# vidport name map v1"


class NameMapError(UserError, ValueError):
    """A map that cannot be parsed, reversed or applied; the message names the rule or key."""


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: str
    replacements: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    dim: int = 0
    shape: tuple[int, ...] | None = None
    from_shape: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None  # merge/split of unequal parts: each part's size along dim
    perm: tuple[int, ...] | None = None  # rename with reordered rows: target chunk i = source chunk perm[i]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise NameMapError(f"unknown rule kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        try:
            rx = re.compile(self.pattern)
        except re.error as e:
            raise NameMapError(f"bad regex {self.pattern!r}: {e}") from None
        if self.kind == "merge" and "part" not in rx.groupindex:
            raise NameMapError(f"merge rule {self.pattern!r} needs a (?P<part>...) group")
        if self.kind in ("merge", "split") and not self.parts:
            raise NameMapError(f"{self.kind} rule {self.pattern!r} needs parts=a,b,...")
        if self.kind == "split" and "{part}" not in self.replacements[0]:
            raise NameMapError(f"split rule {self.pattern!r} needs {{part}} in its replacement")
        if self.kind != "drop" and not self.replacements:
            raise NameMapError(f"{self.kind} rule {self.pattern!r} needs a replacement")
        if self.sizes is not None and (self.kind not in ("merge", "split") or len(self.sizes) != len(self.parts)):
            raise NameMapError(f"{self.kind} rule {self.pattern!r}: sizes= needs one size per part "
                               f"(parts={','.join(self.parts)})")
        if self.perm is not None and (self.kind != "rename" or sorted(self.perm) != list(range(len(self.perm)))):
            raise NameMapError(f"{self.kind} rule {self.pattern!r}: perm= is a permutation of 0..n-1 on a rename")
        if self.kind == "reshape" and self.shape is None:
            raise NameMapError(f"reshape rule {self.pattern!r} needs shape=...")

    @property
    def regex(self) -> re.Pattern:
        return _compile(self.pattern)

    def to_line(self) -> str:
        if self.kind == "drop":
            return f"drop     {self.pattern}"
        opts = []
        if self.parts:
            opts.append("parts=" + ",".join(self.parts))
        if self.kind in ("merge", "split"):
            opts.append(f"dim={self.dim}")
        if self.sizes is not None:
            opts.append("sizes=" + ",".join(map(str, self.sizes)))
        if self.perm is not None:
            opts.append("perm=" + ",".join(map(str, self.perm)))
        if self.shape is not None:
            opts.append("shape=" + ",".join(map(str, self.shape)))
        if self.from_shape is not None:
            opts.append("from=" + ",".join(map(str, self.from_shape)))
        line = f"{self.kind:<8} {self.pattern}  ->  {','.join(self.replacements)}"
        return line + ("  " + " ".join(opts) if opts else "")


_REGEX_CACHE: dict[str, re.Pattern] = {}


def _compile(pattern: str) -> re.Pattern:
    rx = _REGEX_CACHE.get(pattern)
    if rx is None:
        rx = _REGEX_CACHE[pattern] = re.compile(pattern)
    return rx


# ----------------------------------------------------------------------------------------------
# Planned operations: one per target tensor
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """How one target tensor is made from source tensors."""

    target: str
    sources: tuple[str, ...]
    kind: str  # rename | merge | split | tie | reshape
    dim: int = 0
    index: int = 0  # split: which part
    num_parts: int = 1
    shape: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None  # split into unequal parts: every part's size along dim
    perm: tuple[int, ...] | None = None  # rename: dim-0 chunks in this order

    def compute(self, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        if self.kind == "merge":
            import torch

            return torch.cat([get(s) for s in self.sources], dim=self.dim)
        t = get(self.sources[0])
        if self.kind == "split":
            parts = t.split(list(self.sizes), dim=self.dim) if self.sizes else t.chunk(self.num_parts, dim=self.dim)
            return parts[self.index].contiguous()
        if self.kind == "reshape":
            return t.reshape(self.shape)
        if self.perm is not None:
            import torch

            chunks = t.chunk(len(self.perm), dim=0)
            return torch.cat([chunks[i] for i in self.perm], dim=0)
        return t

    def target_shape(self, source_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        shapes = [tuple(source_shapes[s]) for s in self.sources]
        if self.kind == "merge":
            out = list(shapes[0])
            out[self.dim] = sum(s[self.dim] for s in shapes)
            return tuple(out)
        if self.kind == "split" and self.sizes:
            out = list(shapes[0])
            if sum(self.sizes) != out[self.dim]:
                raise NameMapError(f"cannot split {self.sources[0]} {shapes[0]} into parts of sizes "
                                   f"{list(self.sizes)} along dim {self.dim} (they sum to {sum(self.sizes)})")
            out[self.dim] = self.sizes[self.index]
            return tuple(out)
        if self.kind == "split":
            out = list(shapes[0])
            if out[self.dim] % self.num_parts:
                raise NameMapError(f"cannot split {self.sources[0]} {shapes[0]} into {self.num_parts} "
                                   f"equal parts along dim {self.dim}")
            out[self.dim] //= self.num_parts
            return tuple(out)
        if self.kind == "reshape":
            return tuple(self.shape)
        return shapes[0]


@dataclass
class Plan:
    """The map applied to a set of source keys."""

    ops: list[Op] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, Op]:
        return {op.target: op for op in self.ops}

    def mapped(self) -> dict[str, list[str]]:
        """source key -> target keys it feeds."""
        out: dict[str, list[str]] = {}
        for op in self.ops:
            for s in op.sources:
                out.setdefault(s, []).append(op.target)
        return out

    def verify(self, source_shapes: Mapping[str, tuple[int, ...]],
               target_shapes: Mapping[str, tuple[int, ...]], *, what: str = "target") -> None:
        """Strict check: every source used or dropped, every target made once with its shape."""
        problems = []
        if self.unmatched:
            problems.append(f"{len(self.unmatched)} source keys match no rule (e.g. {self.unmatched[:3]})")
        seen: dict[str, int] = {}
        for op in self.ops:
            seen[op.target] = seen.get(op.target, 0) + 1
        dup = [k for k, n in seen.items() if n > 1]
        if dup:
            problems.append(f"{len(dup)} {what} keys made more than once (e.g. {dup[:3]})")
        unexpected = [k for k in seen if k not in target_shapes]
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys not in the {what} (e.g. {unexpected[:3]})")
        missing = [k for k in target_shapes if k not in seen]
        if missing:
            problems.append(f"{len(missing)} {what} keys missing (e.g. {missing[:3]})")
        bad = []
        for op in self.ops:
            if op.target in target_shapes:
                got = op.target_shape(source_shapes)
                if tuple(got) != tuple(target_shapes[op.target]):
                    bad.append(f"{op.target}: {list(got)} vs {list(target_shapes[op.target])}")
        if bad:
            problems.append(f"{len(bad)} shape mismatches (e.g. {bad[:3]})")
        if problems:
            raise NameMapError("; ".join(problems))


# ----------------------------------------------------------------------------------------------
# The map
# ----------------------------------------------------------------------------------------------
@dataclass
class NameMap:
    rules: list[Rule] = field(default_factory=list)
    source: str = ""
    target: str = ""

    # --- matching ---------------------------------------------------------------------------
    def match(self, key: str) -> tuple[Rule, re.Match] | None:
        for rule in self.rules:
            m = rule.regex.match(key)
            if m:
                return rule, m
        return None

    def plan(self, source_keys: Iterable[str]) -> Plan:
        """Apply the map to source key names (no tensors touched)."""
        plan = Plan()
        merges: dict[str, tuple[Rule, dict[str, str]]] = {}
        merge_order: list[str] = []
        for key in source_keys:
            hit = self.match(key)
            if hit is None:
                plan.unmatched.append(key)
                continue
            rule, m = hit
            if rule.kind == "drop":
                plan.dropped.append(key)
            elif rule.kind in ("rename", "reshape"):
                plan.ops.append(Op(m.expand(rule.replacements[0]), (key,), rule.kind, shape=rule.shape,
                                   perm=rule.perm))
            elif rule.kind == "tie":
                plan.ops.extend(Op(m.expand(r), (key,), "tie") for r in rule.replacements)
            elif rule.kind == "split":
                n = len(rule.parts)
                for i, part in enumerate(rule.parts):
                    target = m.expand(rule.replacements[0].replace("{part}", part))
                    plan.ops.append(Op(target, (key,), "split", dim=rule.dim, index=i, num_parts=n, sizes=rule.sizes))
            else:  # merge
                target = m.expand(rule.replacements[0])
                if target not in merges:
                    merges[target] = (rule, {})
                    merge_order.append(target)
                    plan.ops.append(Op(target, (), "merge"))  # placeholder, keeps order
                part = m.group("part")
                if part not in rule.parts:
                    raise NameMapError(f"merge into {target}: part {part!r} of {key} is not in parts={rule.parts}")
                merges[target][1][part] = key
        for i, op in enumerate(plan.ops):
            if op.kind == "merge" and not op.sources:
                rule, found = merges[op.target]
                missing = [p for p in rule.parts if p not in found]
                if missing:
                    raise NameMapError(f"merge into {op.target} is missing part(s) {missing}")
                plan.ops[i] = Op(op.target, tuple(found[p] for p in rule.parts), "merge", dim=rule.dim)
        return plan

    def apply(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eagerly convert an in-memory state dict (small models, tests). Unmatched keys are an error."""
        plan = self.plan(state_dict.keys())
        if plan.unmatched:
            raise NameMapError(f"{len(plan.unmatched)} keys match no rule (e.g. {plan.unmatched[:3]})")
        return {op.target: op.compute(state_dict.__getitem__) for op in plan.ops}

    @classmethod
    def compose(cls, first: NameMap, second: NameMap, source_keys: Iterable[str]) -> NameMap:
        """``second`` applied after ``first``, as one map over ``source_keys`` (e.g. official -> Diffusers ->
        native): literal rules, one per target (a rename, or a merge of the source keys whose intermediate
        names ``second`` merges). Keys either map drops are dropped. Only renames compose through ``first``."""
        keys = list(source_keys)
        p1 = first.plan(keys)
        if p1.unmatched:
            raise NameMapError(f"compose: {len(p1.unmatched)} keys match no rule of the first map "
                               f"(e.g. {p1.unmatched[:3]})")
        via: dict[str, str] = {}
        for op in p1.ops:
            if op.kind != "rename":
                raise NameMapError(f"compose: the first map makes {op.target} by {op.kind}; only renames compose")
            via[op.target] = op.sources[0]
        p2 = second.plan(via)
        if p2.unmatched:
            raise NameMapError(f"compose: {len(p2.unmatched)} keys match no rule of the second map "
                               f"(e.g. {p2.unmatched[:3]})")
        literal = lambda keys: "|".join(re.escape(k) for k in keys)  # noqa: E731
        rules = [Rule("drop", f"^(?:{literal(p1.dropped + [via[k] for k in p2.dropped])})$")] \
            if p1.dropped or p2.dropped else []
        for op in p2.ops:
            sources = tuple(via[s] for s in op.sources)
            if op.kind == "rename":
                rules.append(Rule("rename", f"^{re.escape(sources[0])}$", (op.target,)))
            elif op.kind == "merge":
                rules.append(Rule("merge", f"^(?P<part>{literal(sources)})$", (op.target,), parts=sources, dim=op.dim))
            else:
                raise NameMapError(f"compose: the second map makes {op.target} by {op.kind}; only renames and "
                                   "merges compose")
        return cls(rules, source=first.source, target=second.target)

    # --- reverse ----------------------------------------------------------------------------
    def reverse(self) -> NameMap:
        """The opposite map, derived rule by rule. Drops have no reverse (their keys do not exist
        on the other side)."""
        out: list[Rule] = []
        for r in self.rules:
            if r.kind == "drop":
                continue
            if r.kind in ("rename", "reshape"):
                pat, rep = _invert(r.pattern, r.replacements[0])
                if r.kind == "reshape":
                    if r.from_shape is None:
                        raise NameMapError(f"reshape rule {r.pattern!r} needs from=... to be reversed")
                    out.append(Rule("reshape", pat, (rep,), shape=r.from_shape, from_shape=r.shape))
                else:
                    inverse = None if r.perm is None else tuple(r.perm.index(i) for i in range(len(r.perm)))
                    out.append(Rule("rename", pat, (rep,), perm=inverse))
            elif r.kind == "tie":
                pat, rep = _invert(r.pattern, r.replacements[0])
                out.append(Rule("rename", pat, (rep,)))
                for extra in r.replacements[1:]:
                    out.append(Rule("drop", _invert(r.pattern, extra)[0]))
            elif r.kind == "merge":
                # pattern has (?P<part>...): the target becomes the split source, the part a placeholder
                pat, rep = _invert(r.pattern, r.replacements[0], part_placeholder=True)
                out.append(Rule("split", pat, (rep,), parts=r.parts, dim=r.dim, sizes=r.sizes))
            elif r.kind == "split":
                pat, rep = _invert(r.pattern, r.replacements[0], part_in_replacement=True, parts=r.parts)
                out.append(Rule("merge", pat, (rep,), parts=r.parts, dim=r.dim, sizes=r.sizes))
        return NameMap(out, source=self.target, target=self.source)

    # --- text form --------------------------------------------------------------------------
    def dumps(self) -> str:
        lines = [HEADER]
        if self.source:
            lines.append(f"# source: {self.source}")
        if self.target:
            lines.append(f"# target: {self.target}")
        lines += [r.to_line() for r in self.rules]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    @classmethod
    def loads(cls, text: str, *, origin: str = "<map>") -> NameMap:
        rules, source, target = [], "", ""
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line.startswith("# source:"):
                source = line.split(":", 1)[1].strip()
            elif line.startswith("# target:"):
                target = line.split(":", 1)[1].strip()
            if not line or line.startswith("#"):
                continue
            try:
                rules.append(_parse_line(line))
            except NameMapError as e:
                raise NameMapError(f"{origin}:{lineno}: {e}") from None
        return cls(rules, source=source, target=target)

    @classmethod
    def load(cls, path: str | Path) -> NameMap:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise NameMapError(f"cannot read name map {path}: {e.strerror}") from None
        return cls.loads(text, origin=str(path))


def _parse_line(line: str) -> Rule:
    fields = line.split()
    kind = fields[0]
    if kind not in KINDS:
        raise NameMapError(f"unknown rule kind {kind!r}; expected one of {', '.join(KINDS)}")
    if len(fields) < 2:
        raise NameMapError(f"{kind} rule needs a pattern")
    pattern = fields[1]
    if kind == "drop":
        if len(fields) != 2:
            raise NameMapError(f"drop takes only a pattern, got {line!r}")
        return Rule("drop", pattern)
    if len(fields) < 4 or fields[2] != "->":
        raise NameMapError(f"expected '{kind} PATTERN -> REPLACEMENT [options]', got {line!r}")
    opts = {}
    for opt in fields[4:]:
        if "=" not in opt:
            raise NameMapError(f"option {opt!r} is not key=value")
        k, v = opt.split("=", 1)
        opts[k] = v
    unknown = set(opts) - {"parts", "dim", "shape", "from", "sizes", "perm"}
    if unknown:
        raise NameMapError(f"unknown option(s) {sorted(unknown)}")

    def ints(v):
        return tuple(int(x) for x in v.split(",")) if v else None

    return Rule(kind, pattern, tuple(fields[3].split(",")),
                parts=tuple(opts["parts"].split(",")) if "parts" in opts else (),
                dim=int(opts.get("dim", 0)), shape=ints(opts.get("shape")), from_shape=ints(opts.get("from")),
                sizes=ints(opts.get("sizes")), perm=ints(opts.get("perm")))


# ----------------------------------------------------------------------------------------------
# Reversal of one regex rule: pattern with top-level groups <-> replacement template
# ----------------------------------------------------------------------------------------------
_META = set(".^$*+?{}[]|()\\")


def _segments(pattern: str) -> list[tuple[str, str, str | None]]:
    """Split an anchored pattern into ('lit', text) and ('grp', regex, name) pieces."""
    p = pattern
    if p.startswith("^"):
        p = p[1:]
    if p.endswith("$") and not p.endswith("\\$"):
        p = p[:-1]
    out, i, lit = [], 0, []
    while i < len(p):
        c = p[i]
        if c == "\\":
            if i + 1 >= len(p):
                raise NameMapError(f"pattern {pattern!r} ends in a backslash")
            nxt = p[i + 1]
            if nxt.isalnum():
                raise NameMapError(f"pattern {pattern!r}: cannot reverse \\{nxt} outside a group")
            lit.append(nxt)
            i += 2
        elif c == "(":
            depth, j = 0, i
            while j < len(p):
                if p[j] == "\\":
                    j += 2
                    continue
                depth += p[j] == "("
                depth -= p[j] == ")"
                if depth == 0:
                    break
                j += 1
            inner = p[i + 1:j]
            name = None
            m = re.match(r"\?P<(\w+)>", inner)
            if m:
                name, inner = m.group(1), inner[m.end():]
            elif inner.startswith("?"):
                raise NameMapError(f"pattern {pattern!r}: only plain or (?P<name>) groups can be reversed")
            if lit:
                out.append(("lit", "".join(lit), None))
                lit = []
            out.append(("grp", inner, name))
            i = j + 1
        elif c in _META:
            raise NameMapError(f"pattern {pattern!r}: {c!r} outside a group cannot be reversed")
        else:
            lit.append(c)
            i += 1
    if lit:
        out.append(("lit", "".join(lit), None))
    return out


_REF = re.compile(r"\\(\d+)|\\g<(\w+)>|\{part\}")


def _invert(pattern: str, replacement: str, *, part_placeholder: bool = False,
            part_in_replacement: bool = False, parts: tuple[str, ...] = ()) -> tuple[str, str]:
    """Swap a (pattern, replacement) pair. Groups of the pattern become groups of the new pattern in
    the order the replacement uses them; the old pattern becomes the new replacement template.

    part_placeholder: the pattern's (?P<part>) group becomes ``{part}`` in the new replacement.
    part_in_replacement: the replacement's ``{part}`` becomes a (?P<part>) group of the new pattern.
    """
    segs = _segments(pattern)
    groups = [s for s in segs if s[0] == "grp"]
    by_name = {s[2]: idx for idx, s in enumerate(groups) if s[2]}
    new_pat, order, pos = ["^"], [], 0
    for m in _REF.finditer(replacement):
        new_pat.append(re.escape(replacement[pos:m.start()]))
        pos = m.end()
        if m.group(0) == "{part}":
            if not part_in_replacement:
                raise NameMapError(f"replacement {replacement!r}: unexpected {{part}}")
            new_pat.append("(?P<part>" + "|".join(re.escape(x) for x in parts) + ")")
            order.append("part")
            continue
        idx = int(m.group(1)) - 1 if m.group(1) else (
            by_name[m.group(2)] if m.group(2) in by_name else int(m.group(2)) - 1)
        if idx >= len(groups):
            raise NameMapError(f"replacement {replacement!r} refers to group {idx + 1} that {pattern!r} lacks")
        if idx in order:
            raise NameMapError(f"replacement {replacement!r} uses group {idx + 1} twice; cannot reverse")
        new_pat.append("(" + groups[idx][1] + ")")
        order.append(idx)
    new_pat.append(re.escape(replacement[pos:]) + "$")
    # the new replacement: the old pattern with each group replaced by its new group number
    rep, gi = [], 0
    for kind, text, name in segs:
        if kind == "lit":
            rep.append(text.replace("\\", "\\\\"))
            continue
        if part_placeholder and name == "part":
            rep.append("{part}")
        elif gi in order:
            rep.append(f"\\g<{order.index(gi) + 1}>")
        else:
            raise NameMapError(f"pattern {pattern!r}: group {gi + 1} is not used by {replacement!r}; "
                               "cannot reverse")
        gi += 1
    return "".join(new_pat), "".join(rep)
