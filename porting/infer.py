"""Infer a name map between two state-dict layouts from names, shapes, dtypes and key order alone.

No table for any particular model lives here. The evidence:

0. **Exact names.** A source key whose name equals a target name once a common leading prefix is removed
   (``model.diffusion_model.blocks.0.attn1.to_q.weight`` -> ``blocks.0.attn1.to_q.weight``), with an
   equal shape, maps to it, always: precision before coverage. Prefixes count only when several keys
   share them. Everything below decides only what the names leave open.
1. **Shape signatures.** Keys are grouped into modules (the name minus its last segment); a module's
   signature is the multiset of its tensors' shapes. Only modules with equal signatures are renamed
   onto each other; everything else must be a declared transform.
2. **Names.** Token similarity of module paths (``self_attn.q`` ~ ``attn1.to_q``, ``embedding`` ~
   ``embedder``); digits are left out because each side numbers things its own way.
3. **Context.** Modules already matched tell where a parent went (``attn1`` -> ``attn``); that places
   merges and the leftovers of classes with more sources than targets.
4. **Key order.** Writers list tensors in module order. Order costs per position of displacement inside
   a signature class: a whole shifted block is expensive, one swapped neighbour is cheaper than a clear
   name difference. It decides between otherwise equal candidates (``self_attn`` before
   ``cross_attn``). An alphabetical listing carries no such evidence.
5. **Container index.** The first number of a path (``blocks.7``): a faint hint only, since some
   layouts renumber (the Wan VAE decoder).

Transforms: a **merge** where the last names of sibling modules spell the fused name (``to_q``,
``to_k``, ``to_v`` -> ``qkv``) and their shapes concatenate along one dim (a **split** is the same seen
from the other side); a **tie** where a target's only candidate source is already used; a **reshape**
between leftover tensors whose shapes differ only in unit dims (other equal-numel pairs could as well be
transposes, so they are reported, not guessed).

Within each class the assignment is a minimum-cost matching (Hungarian). Pairs that could be swapped at
equal cost of everything except key order are "decided by order"; when the order is not evidence they
are returned as unresolved, with their candidates, instead of guessed.
"""

from __future__ import annotations

import functools
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from vidport.porting.sources import TensorInfo

# weights of the matching cost. Names and context count fully. Key order costs per position of
# displacement inside a signature class, so a whole shifted block is expensive but a clear name
# difference (time_embed vs text_embed) beats one swapped neighbour. The container index is only a
# faint hint in the assignment (Wan VAE renumbers its decoder); in the swap test it counts fully.
W_NAME, W_CONTEXT, W_DTYPE = 1.0, 1.0, 0.05
# the tokens that tell a class's members apart (context vs x, txt vs img), weighed on their own: in a long
# path one such token is a small share of the whole-name similarity, yet it is the name's real evidence
W_DISTINCT = 0.5
W_ORDER_STEP, W_INDEX_HINT, W_INDEX = 0.1, 0.02, 0.5
# members whose names cluster (similarity >= NAME_CLUSTER) and stand NAME_MARGIN closer to their cluster than to
# anything else in their class are matched among themselves before key order is weighed over the class
NAME_CLUSTER, NAME_MARGIN = 0.6, 0.3
# a fused group whose score is within FUSE_MARGIN of the best is a rival: the names do not decide between them
FUSE_MARGIN = 0.1
EPS = 1e-9


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correspondence:
    """How target tensors are made from source tensors (one per transform)."""

    kind: str  # rename | tie | merge | split | reshape
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    parts: tuple[str, ...] = ()
    dim: int = 0
    shape: tuple[int, ...] | None = None
    from_shape: tuple[int, ...] | None = None
    by_order: bool = False  # the decision needed key order (everything else was equal)
    exact: bool = False  # equal names once a common prefix is removed (decisive)
    sizes: tuple[int, ...] | None = None  # merge/split of unequal parts: each part's size along dim
    by_shapes: bool = False  # a merge/split found by shape arithmetic where the names spell nothing
    perm: tuple[int, ...] | None = None  # rename with reordered rows (dim-0 chunks in this order)
    by_values: bool = False  # equal contents decided it (--match-values)
    row_order: int = 0  # a rename whose rows could be reordered chunks (names and shapes cannot see it)
    by_convention: bool = False  # a fusion across modules whose part order is the attention convention (check)

    @property
    def evidence(self) -> str:
        """What decided it: exact name, key order (all else equal), or names/shapes/context."""
        if self.by_values:
            return "values"
        if self.exact:
            return "exact name"
        if self.by_order:
            return "key order"
        if self.by_convention:
            return "fused parts (shape arithmetic; part order by convention)"
        if self.by_shapes:
            return "fused parts (shape arithmetic + context)"
        return {"merge": "fused parts (names + shapes)", "split": "fused parts (names + shapes)",
                "tie": "tie (only candidate)", "reshape": "reshape (unit dims)"}.get(self.kind, "names + shapes")

    def to_json(self) -> dict:
        out = {"kind": self.kind, "sources": list(self.sources), "targets": list(self.targets),
               "evidence": self.evidence}
        if self.parts:
            out.update(parts=list(self.parts), dim=self.dim)
        if self.sizes:
            out.update(sizes=list(self.sizes))
        if self.perm:
            out.update(perm=list(self.perm))
        if self.by_convention:
            out.update(part_order="convention")
        if self.shape is not None:
            out.update(shape=list(self.shape), from_shape=list(self.from_shape or ()))
        return out


@dataclass
class Unresolved:
    key: str
    side: str  # "source" or "target"
    reason: str
    candidates: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"key": self.key, "side": self.side, "reason": self.reason, "candidates": self.candidates}


@dataclass
class Inference:
    correspondences: list[Correspondence]
    unresolved: list[Unresolved]
    source_order_informative: bool
    target_order_informative: bool
    seconds: float = 0.0

    def mapped(self) -> dict[str, list[str]]:
        """source key -> target keys it feeds."""
        out: dict[str, list[str]] = {}
        for c in self.correspondences:
            if c.kind == "split":
                out.setdefault(c.sources[0], []).extend(c.targets)
            elif c.kind == "merge":
                for s in c.sources:
                    out.setdefault(s, []).append(c.targets[0])
            else:
                out.setdefault(c.sources[0], []).extend(c.targets)
        return out


# ----------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_ALNUM = re.compile(r"[A-Za-z]+|\d+")


_NUMBERED = re.compile(r"^[A-Za-z]+\d+$")


def name_tokens(path: str) -> tuple[str, ...]:
    """Word tokens of a dotted path: split on . _ camelCase and letter/digit borders; numbers dropped (each
    side numbers its blocks its own way), but a numbered word is also kept whole (``attention_norm1`` ~
    ``norm1``, not ``norm2``)."""
    out = []
    for seg in path.split("."):
        for piece in _CAMEL.sub("_", seg).split("_"):
            out += [t.lower() for t in _ALNUM.findall(piece) if not t.isdigit()]
            if _NUMBERED.match(piece):
                out.append(piece.lower())
    return tuple(out)


# the words layouts use for a dual-stream block's two streams: the text/conditioning stream (an official ``txt_attn``
# is a Diffusers ``add_q_proj`` / ``ff_context``) and the image/video stream; words of one stream count as equal
_STREAM_WORDS = ({"txt", "text", "context", "ctx", "add", "added", "encoder", "cap", "caption"},
                 {"img", "image", "vid", "video"})
_STREAM = {w: i for i, words in enumerate(_STREAM_WORDS) for w in words}


def _token_sim(a: str, b: str) -> float:
    if a == b or (a in _STREAM and _STREAM.get(b) == _STREAM[a]):
        return 1.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if long_.startswith(short):
        return 0.8 if len(short) >= 3 else 0.5  # embed~embedding, mid~middle; o~out, q~qkv
    n = 0
    while n < len(short) and a[n] == b[n]:
        n += 1
    return 0.7 if n >= 4 else 0.0  # embedding~embedder


@functools.cache
def name_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Symmetric best-match token similarity in [0, 1]."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    sa = sum(max(_token_sim(x, y) for y in b) for x in a)
    sb = sum(max(_token_sim(x, y) for x in a) for y in b)
    return (sa + sb) / (len(a) + len(b))


_TRAILING_NUMBER = re.compile(r"[A-Za-z_]+?(\d+)")


def first_index(path: str) -> str | None:
    """The first container number of a path: a numeric segment (``blocks.7``) or the number that ends a
    segment naming a container item (``blocks.block7``, Cosmos' flat numbering)."""
    for seg in path.split("."):
        if seg.isdigit():
            return seg
        m = _TRAILING_NUMBER.fullmatch(seg)
        if m and seg.rstrip("0123456789").rstrip("_").lower() in _CONTAINER_ITEMS:
            return m.group(1)
    return None


# segment stems that number the items of a container (``block7``, ``layer_12``); ``conv1``, ``norm2``, ``attn1``
# name sibling modules, not container items, and are no index
_CONTAINER_ITEMS = frozenset({"block", "blocks", "layer", "layers", "stage", "stages", "level", "levels"})


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def order_is_informative(names: Sequence[str]) -> bool:
    """A listing sorted alphabetically (or naturally) says nothing about module order."""
    names = list(names)
    if len(names) < 3:
        return False
    return names != sorted(names) and names != sorted(names, key=_natural_key)


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def ancestors(path: str) -> list[str]:
    """Proper ancestors, deepest first, excluding the root."""
    out = []
    while "." in path:
        path = parent(path)
        out.append(path)
    return out


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------
@dataclass
class _Module:
    path: str
    leaves: dict[str, TensorInfo]  # leaf name -> info, in key order
    pos: int  # position of its first key
    tokens: tuple[str, ...] = ()
    index: str | None = None
    rank: float = 0.0  # rank within its signature class, in [0, 1]

    @functools.cached_property
    def signature(self) -> tuple:
        return tuple(sorted(info.shape for info in self.leaves.values()))

    @functools.cached_property
    def dtypes(self) -> tuple:
        return tuple(sorted(info.dtype for info in self.leaves.values()))


def _modules(infos: Mapping[str, TensorInfo], informative: bool) -> dict[str, _Module]:
    names = list(infos)
    if not informative:
        names = sorted(names, key=_natural_key)
    mods: dict[str, _Module] = {}
    for pos, name in enumerate(names):
        path, _, leaf = name.rpartition(".")
        m = mods.get(path)
        if m is None:
            m = mods[path] = _Module(path, {}, pos, name_tokens(path), first_index(path))
        m.leaves[leaf] = infos[name]
    return mods


def _key(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


# ----------------------------------------------------------------------------------------------
# context: where matched source subtrees went
# ----------------------------------------------------------------------------------------------
class _Context:
    def __init__(self) -> None:
        self.image: dict[str, str] = {}  # source ancestor -> deepest common target ancestor
        self.back: dict[str, str] = {}  # target ancestor -> deepest common source ancestor

    def add(self, src_module: str, tgt_module: str) -> None:
        """Record a matched pair of modules: each source ancestor maps into the common prefix of the
        targets of everything matched below it (and each target ancestor likewise back)."""
        for image, a, b in ((self.image, src_module, tgt_module), (self.back, tgt_module, src_module)):
            for anc in [a] + ancestors(a):
                old = image.get(anc)
                image[anc] = b if old is None else _common_prefix(old, b)

    def score(self, src_path: str, tgt_path: str) -> float:
        """1 if the target lies where the deepest matched ancestor of the source went, 0 if not,
        0.5 when nothing is known."""
        return self._score(self.image, src_path, tgt_path)

    def score_back(self, tgt_path: str, src_path: str) -> float:
        """``score`` seen from the target: 1 if the source lies where the target's deepest matched ancestor
        came from (a merge's whole places its parts as a split's whole does)."""
        return self._score(self.back, tgt_path, src_path)

    @staticmethod
    def _score(image: dict[str, str], path: str, other: str) -> float:
        for anc in ancestors(path):
            img = image.get(anc)
            if img is not None:
                if img == "":
                    return 0.5
                return 1.0 if other == img or other.startswith(img + ".") else 0.0
        return 0.5


def _common_prefix(a: str, b: str) -> str:
    out = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        out.append(x)
    return ".".join(out)


# ----------------------------------------------------------------------------------------------
# the matcher
# ----------------------------------------------------------------------------------------------
class _Matcher:
    def __init__(self, source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo],
                 all_target: Mapping[str, TensorInfo] | None = None,
                 all_source: Mapping[str, TensorInfo] | None = None):
        self.source, self.target = dict(source), dict(target)
        self.all_target = dict(all_target) if all_target is not None else self.target  # settled ones too
        self.all_source = dict(all_source) if all_source is not None else self.source
        self.src_informative = order_is_informative(list(source))
        self.tgt_informative = order_is_informative(list(target))
        self.order_ok = self.src_informative and self.tgt_informative
        self.smods = _modules(self.source, self.src_informative)
        self.tmods = _modules(self.target, self.tgt_informative)
        self.ctx = _Context()
        self.out: list[Correspondence] = []
        self.unresolved: list[Unresolved] = []
        self.order_groups: list[list[tuple[_Module, _Module]]] = []  # pairs key order alone decided
        self.used_s: set[str] = set()  # source module paths consumed
        self.used_t: set[str] = set()

    # --- costs ------------------------------------------------------------------------------
    def _base_cost(self, s: _Module, t: _Module, *, use_context: bool) -> float:
        """Everything but key order and the container index."""
        c = W_NAME * (1.0 - name_similarity(s.tokens, t.tokens))
        if use_context:
            c += W_CONTEXT * (1.0 - self.ctx.score(s.path, t.path))
        if "?" not in s.dtypes + t.dtypes and s.dtypes != t.dtypes:
            c += W_DTYPE
        return c

    def _assign(self, S: list[_Module], T: list[_Module], *, use_context: bool) -> None:
        """Minimum-cost matching of modules with equal signatures; records ambiguity."""
        from scipy.optimize import linear_sum_assignment

        S, T = self._name_clusters(S, T, use_context=use_context)
        if not S or not T:
            return
        _rank(S)
        _rank(T)
        ds, dt = _distinct_tokens(S), _distinct_tokens(T)
        base = np.array([[self._base_cost(s, t, use_context=use_context)
                          + W_DISTINCT * (1.0 - name_similarity(ds[s.path], dt[t.path])) for t in T] for s in S])
        index = np.array([[float(s.index != t.index) for t in T] for s in S])
        # displacement in positions of the larger class
        steps = max(len(S), len(T)) - 1
        order = np.abs(np.array([s.rank for s in S])[:, None] - np.array([t.rank for t in T])[None, :]) * steps
        # an alphabetical listing still breaks exact ties (determinism) but outweighs nothing
        cost = base + W_INDEX_HINT * index + (W_ORDER_STEP if self.order_ok else 1e-4) * order
        rows, cols = linear_sum_assignment(cost)
        base = base + W_INDEX * index  # what the swap test weighs: names, context, dtype and index
        pairs = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: S[rc[0]].pos)
        # an uneven class: a pair whose source (or target) a left-over one of the class would replace at the same
        # cost is a guess between them (std-of-means vs mean-of-stds for latents_std): key order says little
        # across classes of different sizes, so it is left to the user with every tied candidate
        if len(S) != len(T):
            free_r = sorted(set(range(len(S))) - set(rows.tolist()))
            free_c = sorted(set(range(len(T))) - set(cols.tolist()))
            kept = []
            for r, c in pairs:
                rivals_s = [S[f] for f in free_r if base[f, c] <= base[r, c] + EPS]
                rivals_t = [T[f] for f in free_c if base[r, f] <= base[r, c] + EPS]
                if rivals_s or rivals_t:
                    self._tied(S[r], T[c], rivals_s, rivals_t)
                else:
                    kept.append((r, c))
            pairs = kept
        # pairs whose swap costs the same without key order were decided by order alone
        by_order: dict[int, set[int]] = defaultdict(set)
        if len(pairs) > 1:
            r = np.array([p[0] for p in pairs])
            c = np.array([p[1] for p in pairs])
            b = base[np.ix_(r, c)]  # b[i, j]: source of pair i with target of pair j
            d = np.diag(b)
            swap = (b + b.T) <= (d[:, None] + d[None, :] + EPS)
            np.fill_diagonal(swap, False)
            for i, j in zip(*np.nonzero(np.triu(swap))):
                by_order[int(i)].add(int(j))
                by_order[int(j)].add(int(i))
        if not self.order_ok:
            for group in _components(by_order):
                srcs = [S[pairs[i][0]] for i in group]
                tgts = [T[pairs[i][1]] for i in group]
                self._ambiguous(srcs, tgts)
            pairs = [p for i, p in enumerate(pairs) if i not in by_order]
        for i, (r, c) in enumerate(pairs):
            self._rename(S[r], T[c], by_order=i in by_order)
        if self.order_ok:  # remembered: anchors found later may say the order was the other way
            for group in _components(by_order):
                self.order_groups.append([(S[pairs[i][0]], T[pairs[i][1]]) for i in group])

    def _name_clusters(self, S: list[_Module], T: list[_Module], *, use_context: bool
                       ) -> tuple[list[_Module], list[_Module]]:
        """Members whose names form a cluster of their own, as many sources as targets, each far closer to the
        cluster than to anything else in the class (``double_stream_modulation_{img,txt}.lin`` ~
        ``..._{img,txt}.linear``, versus the blocks' MLPs of the same shape), are matched among themselves first
        and the rest of the class without them: key order counts positions inside the class, and a table that
        one class declares after its blocks and the other before them would otherwise shift the whole class
        along a chain. Returns what is left to match."""
        if len(S) < 2 or len(T) < 2:
            return S, T
        sim = np.array([[name_similarity(s.tokens, t.tokens) for t in T] for s in S])
        adj: dict[int, set[int]] = {k: set() for k in range(len(S) + len(T))}
        for i, j in zip(*np.nonzero(sim >= NAME_CLUSTER)):
            adj[int(i)].add(len(S) + int(j))
            adj[len(S) + int(j)].add(int(i))
        done_s, done_t = set(), set()
        for comp in _components(adj):
            ci = [k for k in comp if k < len(S)]
            cj = [k - len(S) for k in comp if k >= len(S)]
            if not ci or len(ci) != len(cj) or len(ci) == len(S):
                continue
            out_j = [j for j in range(len(T)) if j not in cj]
            out_i = [i for i in range(len(S)) if i not in ci]
            if all(sim[i, cj].max() - sim[i, out_j].max(initial=0) >= NAME_MARGIN for i in ci) and \
                    all(sim[ci, j].max() - sim[out_i, j].max(initial=0) >= NAME_MARGIN for j in cj):
                self._assign([S[i] for i in ci], [T[j] for j in cj], use_context=use_context)
                done_s.update(ci)
                done_t.update(cj)
        return [m for i, m in enumerate(S) if i not in done_s], [m for j, m in enumerate(T) if j not in done_t]

    def _ambiguous(self, srcs: list[_Module], tgts: list[_Module]) -> None:
        for s in srcs:
            self.used_s.add(s.path)
        for t in tgts:
            self.used_t.add(t.path)
        reason = ("indistinguishable by names, shapes and dtypes"
                  + ("" if self.order_ok else "; key order is alphabetical, so it is no evidence"))
        for s in srcs:
            for leaf in s.leaves:
                cands = [_key(t.path, leaf2) for t in tgts for leaf2, info in t.leaves.items()
                         if info.shape == s.leaves[leaf].shape]
                self.unresolved.append(Unresolved(_key(s.path, leaf), "source", reason, cands))

    def _tied(self, s: _Module, t: _Module, rivals_s: list[_Module], rivals_t: list[_Module]) -> None:
        """``s`` -> ``t`` is no better than a left-over rival: both go to unresolved with every tied candidate
        (the rivals stay free for later phases)."""
        self.used_s.add(s.path)
        self.used_t.add(t.path)
        why = "tied with a left-over tensor of the same shape on names and context (key order is no evidence " \
              "across classes of different sizes)"
        for leaf, info in s.leaves.items():
            cands = [_key(m.path, l2) for m in [t] + rivals_t for l2, i2 in m.leaves.items() if i2.shape == info.shape]
            self.unresolved.append(Unresolved(_key(s.path, leaf), "source", why, cands))
        for leaf, info in t.leaves.items():
            cands = [_key(m.path, l2) for m in [s] + rivals_s for l2, i2 in m.leaves.items() if i2.shape == info.shape]
            self.unresolved.append(Unresolved(_key(t.path, leaf), "target", why, cands))

    def _rename(self, s: _Module, t: _Module, *, by_order: bool = False) -> None:
        self.used_s.add(s.path)
        self.used_t.add(t.path)
        self.ctx.add(s.path, t.path)
        for sl, tl in _pair_leaves(s, t):
            self.out.append(Correspondence("rename", (_key(s.path, sl),), (_key(t.path, tl),), by_order=by_order))

    # --- phases ---------------------------------------------------------------------------------
    def classes(self) -> dict[tuple, tuple[list[_Module], list[_Module]]]:
        by_sig: dict[tuple, tuple[list[_Module], list[_Module]]] = {}
        for m in self.smods.values():
            if m.path not in self.used_s:
                by_sig.setdefault(m.signature, ([], []))[0].append(m)
        for m in self.tmods.values():
            if m.path not in self.used_t:
                by_sig.setdefault(m.signature, ([], []))[1].append(m)
        return by_sig

    def run(self) -> None:
        # 1. classes with as many sources as targets: names, index and order decide
        for S, T in self.classes().values():
            if S and len(S) == len(T):
                self._assign(S, T, use_context=False)
        # 2. merges/splits: unmatched modules whose name the parts of unmatched siblings spell
        self._merges_and_splits()
        # 2b. fused tensors whose names spell nothing (linear1 -> attn.to_q, to_k, to_v, proj_mlp): modules
        # where the context puts the whole, whose shapes concatenate exactly (before they are taken as renames)
        self._fuse_by_shapes(final=False)
        # 3. the rest, now with context (uneven classes, leftovers)
        for S, T in self.classes().values():
            if S and T:
                self._assign(S, T, use_context=True)
        # 3b. what the renames left: fused groups that were ambiguous before
        self._fuse_by_shapes(final=True)
        # 3c. pairs key order decided, re-paired where name-decided anchors show their subtrees went the
        # other way (an official block lists its context stream first, the Diffusers block second)
        self._reorder_by_anchors()
        # 4. ties: a target whose only candidate source is already used
        self._ties()
        # 5. key level: modules that were cut differently; then equal-numel reshapes
        self._keys_level()

    # --- merges / splits ------------------------------------------------------------------------
    def _merges_and_splits(self) -> None:
        """Unmatched modules whose last name is spelled by the parts of several unmatched siblings on the
        other side (qkv <- to_q, to_k, to_v), when the shapes concatenate. A module whose signature the
        other side also has may still be a merge (a tiny model's kv can look like its ffn input). Wholes
        that tie between the same candidate groups (img_attn.qkv and txt_attn.qkv between to_q/k/v and
        add_q/k/v_proj) are paired in key order when the order is evidence, else left unresolved."""
        free_s = [m for m in self.smods.values() if m.path not in self.used_s]
        free_t = [m for m in self.tmods.values() if m.path not in self.used_t]
        index_s, index_t = _PartIndex(free_s), _PartIndex(free_t)
        for wholes, index, merge in ((free_t, index_s, True), (free_s, index_t, False)):
            contested: dict[tuple, list[tuple[_Module, list]]] = defaultdict(list)
            for whole in wholes:
                best = self._fuse_candidates(whole, index, merge=merge)
                if not best:
                    continue
                top = [b for b in best if best[0][0] - b[0] <= FUSE_MARGIN]  # a close second is a tie
                if len(top) == 1:
                    self._do_fuse(whole, top[0][2], top[0][3], top[0][4], merge=merge)
                else:
                    contested[tuple(sorted(",".join(g.path for g in b[2]) for b in top))].append((whole, top))
            for tied in contested.values():
                self._pair_tied_by_order(tied, merge=merge)

    def _fuse_candidates(self, whole: _Module, index: _PartIndex, *, merge: bool) -> list:
        """(score, -position, group, parts, dim) of every sibling group whose parts spell the whole's
        name (or one token of it) and concatenate into it, best first."""
        used = self.used_s if merge else self.used_t
        if whole.path in (self.used_t if merge else self.used_s):
            return []
        word = whole.path.rpartition(".")[2]
        # the fused name may be one token of the last segment: img_attn_qkv -> qkv, kv_linear -> kv
        words = [word] + [w for w in word.split("_") if w != word and len(w) > 1]
        best: list[tuple[float, int, list[_Module], tuple[str, ...], int]] = []
        groups = [g for w in dict.fromkeys(words) for g in index.groups(w, used)]
        for group, parts in groups:
            dim = _concat_dim(list(group), whole)
            if dim is None:
                continue
            ctx = (self.ctx.score(group[0].path, whole.path) if merge
                   else self.ctx.score(whole.path, group[0].path))
            grp_parent = parent(group[0].path)
            sim = name_similarity(name_tokens(grp_parent), name_tokens(parent(whole.path)))
            score = W_CONTEXT * ctx + W_NAME * sim + W_INDEX * (first_index(grp_parent) == whole.index)
            best.append((score, -group[0].pos, group, parts, dim))
        best.sort(key=lambda b: (-b[0], -b[1]))
        return best

    def _pair_tied_by_order(self, tied: list[tuple[_Module, list]], *, merge: bool) -> None:
        """Wholes that tie between the same groups: paired in key order (the n-th whole with the n-th
        group) when both listings are in module order and the counts agree; otherwise unresolved."""
        groups = sorted(tied[0][1], key=lambda b: b[2][0].pos)
        rivals = [w for w, _ in tied]
        wholes = sorted(tied, key=lambda wt: self._anchored_rank(wt[0], rivals, side="target" if merge else "source"))
        free = [b for b in groups if not any(g.path in (self.used_s if merge else self.used_t) for g in b[2])]
        # paired in the order their subtrees' name-decided anchors went (_anchored_rank), else key order
        if self.order_ok and len(wholes) == len(free):
            for (whole, _), b in zip(wholes, free):
                self._do_fuse(whole, b[2], b[3], b[4], merge=merge, by_order=True)
            return
        side = "target" if merge else "source"
        cands = [",".join(g.path for g in b[2]) for b in groups]
        for whole, _ in wholes:
            for leaf in whole.leaves:
                self.unresolved.append(Unresolved(_key(whole.path, leaf), side,
                                                  "several groups concatenate to it equally well", cands))
            (self.used_t if merge else self.used_s).add(whole.path)

    def _reorder_by_anchors(self) -> None:
        for group in self.order_groups:
            srcs = [s for s, _ in group]
            tgts = sorted((t for _, t in group), key=lambda t: t.pos)
            ranks = {s.path: self._anchored_rank(s, srcs, strict=True) for s in srcs}
            if all(r is not None for r in ranks.values()):
                pairs = zip(sorted(srcs, key=lambda s: ranks[s.path]), tgts)
            else:  # the targets' subtrees may have the anchors (where each came from on the source side)
                tranks = {t.path: self._anchored_rank(t, tgts, strict=True, side="target") for t in tgts}
                if any(r is None for r in tranks.values()):
                    continue
                pairs = zip(sorted(srcs, key=lambda s: s.pos), sorted(tgts, key=lambda t: tranks[t.path]))
            pairs = list(pairs)
            if {(s.path, t.path) for s, t in pairs} == {(s.path, t.path) for s, t in group}:
                continue  # the anchors agree with the key order
            keys = {_key(s.path, leaf) for s in srcs for leaf in s.leaves}
            self.out = [c for c in self.out if not (c.kind == "rename" and c.sources[0] in keys)]
            for s, t in pairs:
                for sl, tl in _pair_leaves(s, t):
                    self.out.append(Correspondence("rename", (_key(s.path, sl),), (_key(t.path, tl),),
                                                   by_order=True))

    def _anchored_rank(self, whole: _Module, rivals: list[_Module], *, strict: bool = False, side: str = "source"):
        """Where a whole's own subtree went: the first position on the other side of the name-decided
        correspondences under the segment that tells it from its rivals (``context_block`` vs ``x_block``).
        ``side``: the side ``whole`` is on. Subtrees may be listed in another order on the two sides (an official
        block's context stream first, the Diffusers block's second); without anchors, key order."""
        segs = whole.path.split(".")
        others = [r.path.split(".") for r in rivals if r is not whole]
        n = next((i for i in range(len(segs)) if any(i >= len(o) or o[i] != segs[i] for o in others)), len(segs))
        subtree = ".".join(segs[:n + 1]) + "."
        mine, theirs, listing = ((lambda c: c.sources, lambda c: c.targets, self.all_target) if side == "source"
                                 else (lambda c: c.targets, lambda c: c.sources, self.all_source))
        pos = {k: i for i, k in enumerate(listing)}
        anchors = [pos[t] for c in self.out if not c.by_order and c.kind in ("rename", "tie")
                   if mine(c)[0].startswith(subtree) for t in theirs(c) if t in pos]
        if not anchors:
            return None if strict else (float(whole.pos), whole.pos)
        return (min(anchors), whole.pos)  # where the subtree begins on the other side

    def _do_fuse(self, whole: _Module, group: list[_Module], parts: tuple[str, ...], dim: int, *, merge: bool,
                 by_order: bool = False) -> None:
        used = self.used_s if merge else self.used_t
        for g in group:
            used.add(g.path)
        (self.used_t if merge else self.used_s).add(whole.path)
        for leaf in whole.leaves:
            members = tuple(_key(g.path, leaf) for g in group)
            if merge:
                self.out.append(Correspondence("merge", members, (_key(whole.path, leaf),), parts=parts, dim=dim,
                                               by_order=by_order))
            else:
                self.out.append(Correspondence("split", (_key(whole.path, leaf),), members, parts=parts, dim=dim,
                                               by_order=by_order))
        for g in group:
            if merge:
                self.ctx.add(g.path, whole.path)
            else:
                self.ctx.add(whole.path, g.path)

    def _fuse_by_shapes(self, *, final: bool) -> None:
        free_s = [m for m in self.smods.values() if m.path not in self.used_s]
        free_t = [m for m in self.tmods.values() if m.path not in self.used_t]
        for whole in free_s:  # splits: one source module -> target modules
            self._fuse_siblings(whole, free_t, free_s, merge=False, final=final)
        free_s = [m for m in free_s if m.path not in self.used_s]
        free_t = [m for m in free_t if m.path not in self.used_t]
        for whole in free_t:  # merges: source modules -> one target module
            self._fuse_siblings(whole, free_s, free_t, merge=True, final=final)

    def _fuse_siblings(self, whole: _Module, pool: list[_Module], rivals: list[_Module], *, merge: bool,
                       final: bool) -> None:
        used_other = self.used_s if merge else self.used_t
        if whole.path in (self.used_t if merge else self.used_s):
            return
        found = self._shape_groups(whole, pool, rivals, merge=merge)
        if len(found) > 1 and not final:
            return  # ambiguous now: the renames may settle it (tried again after them)
        cross = len(found) == 1 and len({parent(m.path) for m in found[0][0]}) > 1
        convention = _attention_first(found[0][0]) if cross else None
        if len(found) != 1 or (cross and convention is None):
            self._fusion_unresolved(whole, found, merge=merge, cross=cross)
            return
        group, dim = (convention, found[0][1]) if cross else found[0]
        parts = _relative_parts([m.path for m in group])
        equal = all(len({m.leaves[leaf].shape[dim] for m in group}) == 1 for leaf in whole.leaves)
        for m in group:
            used_other.add(m.path)
        (self.used_t if merge else self.used_s).add(whole.path)
        for leaf in whole.leaves:
            members = tuple(_key(m.path, leaf) for m in group)
            leaf_sizes = None if equal else tuple(m.leaves[leaf].shape[dim] for m in group)
            kind, srcs, tgts = ("merge", members, (_key(whole.path, leaf),)) if merge else \
                ("split", (_key(whole.path, leaf),), members)
            self.out.append(Correspondence(kind, srcs, tgts, parts=parts, dim=dim, sizes=leaf_sizes, by_shapes=True,
                                           by_convention=cross))
        for m in group:
            if merge:
                self.ctx.add(m.path, whole.path)
            else:
                self.ctx.add(whole.path, m.path)

    def _shape_groups(self, whole: _Module, pool: list[_Module], rivals: list[_Module], *,
                      merge: bool) -> list[tuple[list[_Module], int]]:
        """Groups of free modules (siblings first, then the whole region the context gives) whose shapes
        concatenate into ``whole``, with the dim."""
        used_other = self.used_s if merge else self.used_t

        def here(a: _Module, b: _Module) -> bool:  # b lies where the context places a (a on whole's side)
            return (self.ctx.score_back(a.path, b.path) if merge else self.ctx.score(a.path, b.path)) == 1.0

        near = [m for m in pool if m.path not in used_other and set(m.leaves) == set(whole.leaves)
                and _could_concat(m, whole) and here(whole, m)]
        # not modules that other free modules of the whole's side can fill by renames, as many as there are
        # (an adaLN linear beside the fused q/k/v/mlp): only a signature's surplus can be parts
        region: list[_Module] = []
        for sig in dict.fromkeys(m.signature for m in near):
            same = [m for m in near if m.signature == sig]
            taken = self.used_t if merge else self.used_s
            fillers = {r.path for r in rivals if r is not whole and r.path not in taken
                       and r.signature == sig and any(here(r, m) for m in same)}
            if len(same) > len(fillers):
                region += same
        region.sort(key=lambda m: m.pos)
        siblings: dict[str, list[_Module]] = defaultdict(list)
        for m in region:
            siblings[parent(m.path)].append(m)
        found = []
        for group in siblings.values():  # siblings first; then anywhere in the region (q/k/v under attn
            if 2 <= len(group) <= 10:     # and proj_mlp beside it)
                found.extend(_concat_subsets(group, whole))
        if not found and 2 <= len(region) <= 10:
            found.extend(_concat_subsets(region, whole))
        return found

    def _fusion_unresolved(self, whole: _Module, found: list, *, merge: bool, cross: bool) -> None:
        """Precision before coverage: a fusion by shapes whose part order is unknown (across modules) or
        that several groups fit is reported with its candidates; a cross-module one reserves its parts."""
        side = "target" if merge else "source"
        if cross:
            members = found[0][0]
            for leaf in whole.leaves:
                self.unresolved.append(Unresolved(
                    _key(whole.path, leaf), side, "fused by shape arithmetic, but the order of its parts is "
                    "not known from names (--match-values decides it)", [_key(m.path, leaf) for m in members]))
                for m in members:
                    self.unresolved.append(Unresolved(_key(m.path, leaf), "source" if merge else "target",
                                                      f"part of {_key(whole.path, leaf)} (order unknown)"))
            for m in members:
                (self.used_s if merge else self.used_t).add(m.path)
        elif found:
            cands = [",".join(m.path for m in s[0]) for s in found[:6]]
            for leaf in whole.leaves:
                self.unresolved.append(Unresolved(_key(whole.path, leaf), side, "several sibling groups "
                                                  "concatenate to it by shape and the names spell none", cands))
        if found:
            (self.used_t if merge else self.used_s).add(whole.path)

    # --- ties -------------------------------------------------------------------------------------
    def _ties(self) -> None:
        renamed = {c.sources[0]: c for c in self.out if c.kind == "rename"}
        # every source module, those settled by equal names too (transformers saves T5's tied embedding once, as
        # shared.weight, which then matches by name; encoder.embed_tokens.weight is its tied copy)
        smods = _modules(self.all_source, self.src_informative)
        for t in [m for m in self.tmods.values() if m.path not in self.used_t]:
            cands = [s for s in smods.values() if s.signature == t.signature]
            if len(cands) != 1:
                continue
            s = cands[0]
            if s.path not in self.used_s and not all(_key(s.path, sl) in renamed for sl in s.leaves):
                continue
            pairs = _pair_leaves(s, t)
            if not all(_key(s.path, sl) in renamed for sl, _ in pairs):
                continue
            # tied weights are matrices (an embedding and its copy: umT5 token_embedding -> shared,
            # encoder.embed_tokens); a vector of the same length is a coincidence unless the names relate it
            # (latents_mean beside a norm's weight is no copy of it)
            first = parent(renamed[_key(s.path, pairs[0][0])].targets[0])
            vectors = all(len(info.shape) < 2 for info in t.leaves.values())
            if vectors and name_similarity(s.tokens, t.tokens) == 0 and \
                    name_similarity(name_tokens(first), t.tokens) == 0:
                continue
            self.used_t.add(t.path)
            for sl, tl in pairs:
                old = renamed[_key(s.path, sl)]
                targets = tuple(sorted(old.targets + (_key(t.path, tl),), key=list(self.all_target).index))
                new = Correspondence("tie", old.sources, targets)
                self.out[self.out.index(old)] = new
                renamed[old.sources[0]] = new

    # --- key level ------------------------------------------------------------------------------
    def _keys_level(self) -> None:
        done_s = {s for c in self.out for s in c.sources}
        done_t = {t for c in self.out for t in c.targets}
        done_s |= {u.key for u in self.unresolved if u.side == "source"}
        done_t |= {u.key for u in self.unresolved if u.side == "target"}
        for u in self.unresolved:
            done_t.update(u.candidates if u.side == "source" else ())
        left_s = {k: v for k, v in self.source.items() if k not in done_s}
        left_t = {k: v for k, v in self.target.items() if k not in done_t}
        if not left_s and not left_t:
            return
        # each leftover key becomes its own one-tensor "module"
        ks = {k: _Module(k, {"": v}, i, name_tokens(k), first_index(k)) for i, (k, v) in enumerate(left_s.items())}
        kt = {k: _Module(k, {"": v}, i, name_tokens(k), first_index(k)) for i, (k, v) in enumerate(left_t.items())}
        rest_s, rest_t = self._sub_assign(list(ks.values()), list(kt.values()), key=lambda m: m.signature)
        # equal numel, other shape: a reshape when only unit dims differ ([1, 6, d] -> [6, d]); chosen
        # among such tensors by the same evidence. [a, b] -> [b, a] could as well be a transpose: not guessed.
        rest_s, rest_t = self._sub_assign(rest_s, rest_t, key=lambda m: _squeezed(m.leaves[""].shape))
        for s in rest_s:
            shape = s.leaves[""].shape
            cands = [t.path for t in rest_t if _numel(t.leaves[""].shape) == _numel(shape)]
            if cands:
                self.unresolved.append(Unresolved(
                    s.path, "source", "only tensors of equal size but other dims are left (a transpose and a "
                    "reshape look alike by shape)", cands))
                continue
            # every target of this shape is filled already: perhaps a tied copy of a source that maps there
            filled = [t for c in self.out for t in c.targets if self.all_target[t].shape == shape]
            self.unresolved.append(Unresolved(
                s.path, "source", "every target tensor of this shape is already filled; if this is a tied copy "
                "of the tensor that fills one, drop it" if filled else "no target tensor of this size", filled))
        for t in rest_t:
            cands = [s.path for s in rest_s if _numel(s.leaves[""].shape) == _numel(t.leaves[""].shape)]
            self.unresolved.append(Unresolved(t.path, "target", "no source tensor maps onto it", cands))

    def _sub_assign(self, S: list[_Module], T: list[_Module], key) -> tuple[list[_Module], list[_Module]]:
        """Assign one-tensor modules class by class (``key`` makes the classes); returns the leftovers."""
        classes: dict[object, tuple[list[_Module], list[_Module]]] = {}
        for m in S:
            classes.setdefault(key(m), ([], []))[0].append(m)
        for m in T:
            classes.setdefault(key(m), ([], []))[1].append(m)
        sub = _Matcher.__new__(_Matcher)
        sub.__dict__.update(self.__dict__)
        sub.out, sub.used_s, sub.used_t, sub.unresolved = [], set(), set(), []
        for cs, ct in classes.values():
            if cs and ct:
                sub._assign(cs, ct, use_context=True)
        shapes_s = {m.path: m.leaves[""].shape for m in S}
        shapes_t = {m.path: m.leaves[""].shape for m in T}
        for c in sub.out:  # the module path of a one-tensor module is the key itself
            src, tgt = c.sources[0][:-1], c.targets[0][:-1]
            if shapes_s[src] == shapes_t[tgt]:
                self.out.append(Correspondence("rename", (src,), (tgt,), by_order=c.by_order))
            else:
                self.out.append(Correspondence("reshape", (src,), (tgt,), shape=shapes_t[tgt],
                                               from_shape=shapes_s[src], by_order=c.by_order))
        for u in sub.unresolved:
            self.unresolved.append(Unresolved(u.key[:-1], u.side, u.reason, [c[:-1] for c in u.candidates]))
        return ([m for m in S if m.path not in sub.used_s], [m for m in T if m.path not in sub.used_t])


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _distinct_tokens(mods: list[_Module]) -> dict[str, tuple[str, ...]]:
    """Each module's name tokens minus those every module of the class has."""
    common = set.intersection(*(set(m.tokens) for m in mods)) if mods else set()
    return {m.path: tuple(t for t in m.tokens if t not in common) for m in mods}


def _rank(mods: list[_Module]) -> None:
    mods.sort(key=lambda m: m.pos)
    n = len(mods)
    for i, m in enumerate(mods):
        m.rank = i / (n - 1) if n > 1 else 0.5


def _components(adj: dict[int, set[int]]) -> list[list[int]]:
    seen, out = set(), []
    for start in sorted(adj):
        if start in seen:
            continue
        stack, comp = [start], []
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            comp.append(x)
            stack.extend(adj[x] - seen)
        out.append(sorted(comp))
    return out


def _pair_leaves(s: _Module, t: _Module) -> list[tuple[str, str]]:
    """Leaves of two modules with equal signature: equal names first, then shape, then order."""
    pairs, left_t = [], dict(t.leaves)
    rest = []
    for sl, info in s.leaves.items():
        if sl in left_t and left_t[sl].shape == info.shape:
            pairs.append((sl, sl))
            del left_t[sl]
        else:
            rest.append(sl)
    for sl in rest:
        shape = s.leaves[sl].shape
        options = [tl for tl, ti in left_t.items() if ti.shape == shape] or list(left_t)  # reshape: one leaf
        options.sort(key=lambda tl: -name_similarity(name_tokens(sl), name_tokens(tl)))
        pairs.append((sl, options[0]))
        del left_t[options[0]]
    return pairs


class _PartIndex:
    """Sibling modules whose last segments read ``prefix + part + suffix`` (to_q, to_k, to_v)."""

    def __init__(self, pool: list[_Module]):
        self.families: dict[tuple, list[tuple[str, _Module]]] = defaultdict(list)
        self.by_part: dict[str, set[tuple]] = defaultdict(set)
        for m in pool:
            par, _, last = m.path.rpartition(".")
            for i in range(len(last)):
                for j in range(i + 1, len(last) + 1):
                    part = last[i:j]
                    if not part.isdigit():
                        key = (par, last[:i], last[j:])
                        self.families[key].append((part, m))
                        self.by_part[part].add(key)

    def groups(self, word: str, used: set[str]):
        """Groups of at least two siblings whose parts spell ``word`` (q, k, v -> qkv)."""
        keys = set()
        for i in range(len(word)):
            for j in range(i + 1, len(word) + 1):
                keys |= self.by_part.get(word[i:j], set())
        for key in sorted(keys):
            _, pre, post = key
            # wq, wk, wv -> wqkv: the fused name may carry the siblings' common prefix/suffix once
            w = word
            if (pre or post) and w.startswith(pre) and w.endswith(post) and len(w) > len(pre) + len(post):
                w = w[len(pre):len(w) - len(post)]
            members = [(p, m) for p, m in self.families[key] if p in w and m.path not in used]
            if len(members) < 2:
                continue
            members.sort(key=lambda pm: pm[1].pos)
            chosen = _spell(members, w)
            if chosen and len(chosen) >= 2:
                yield [m for _, m in chosen], tuple(p for p, _ in chosen)


def _spell(members: list[tuple[str, _Module]], word: str) -> list[tuple[str, _Module]] | None:
    """Members whose parts, in the word's own order, spell ``word`` (qkv: q, then k, then v). The word
    fixes the concatenation order, so this needs no key order; among several spellings the one that
    follows key order wins."""
    if not word:
        return []
    for i, (part, m) in enumerate(members):
        if word.startswith(part):
            rest = _spell(members[:i] + members[i + 1:], word[len(part):])
            if rest is not None:
                return [(part, m)] + rest
    return None


def differing_span(keys: Sequence[str]) -> tuple[int, int]:
    """(head, tail): how many leading and trailing dotted segments all ``keys`` share (never overlapping)."""
    segs = [k.split(".") for k in keys]
    head = 0
    while all(len(s) > head for s in segs) and len({s[head] for s in segs}) == 1:
        head += 1
    tail = 0
    while all(len(s) - tail > head for s in segs) and len({s[len(s) - 1 - tail] for s in segs}) == 1:
        tail += 1
    return head, tail


def _relative_parts(paths: list[str]) -> tuple[str, ...]:
    """What the paths say past their common leading segments (attn.to_q, ..., proj_mlp)."""
    segs = [p.split(".") for p in paths]
    n = 0
    while all(len(s) > n + 1 for s in segs) and len({s[n] for s in segs}) == 1:
        n += 1
    return tuple(".".join(s[n:]) for s in segs)


_ATTENTION_ROLES = {"q": "q", "query": "q", "k": "k", "key": "k", "v": "v", "value": "v"}


def _attention_first(group: list[_Module]) -> list[_Module] | None:
    """The parts of a fusion across modules in the attention convention, when their names allow exactly that:
    one query, one key and one value projection (a name token ``q``/``query``, ``k``/``key``, ``v``/``value``
    in the last segment: ``to_q``, ``q_proj``, ``query``) under one parent, plus at most one other part
    (``proj_mlp``): q, k, v, then the other. A parallel block's fused input projection is laid out this way
    wherever it exists (attention's q, k, v, then the MLP input); names cannot prove it, so the split says
    "part order by convention" and the report asks for a check (``--match-values`` decides). Anything else
    (two other parts, a role twice, no attention triple) stays unresolved."""
    roles: dict[str, _Module] = {}
    other: list[_Module] = []
    for m in group:
        tokens = m.path.rpartition(".")[2].lower().split("_")
        found = {_ATTENTION_ROLES[t] for t in tokens if t in _ATTENTION_ROLES}
        if len(found) > 1 or (found and next(iter(found)) in roles):
            return None
        if found:
            roles[found.pop()] = m
        else:
            other.append(m)
    if set(roles) != {"q", "k", "v"} or len(other) > 1 or len({parent(m.path) for m in roles.values()}) != 1:
        return None
    return [roles["q"], roles["k"], roles["v"]] + other


def _could_concat(m: _Module, whole: _Module) -> bool:
    """Every leaf has the whole's rank, no larger dims, and differs in at most one dim."""
    for leaf, info in whole.leaves.items():
        a, b = m.leaves[leaf].shape, info.shape
        if len(a) != len(b) or any(x > y for x, y in zip(a, b)) or sum(x != y for x, y in zip(a, b)) > 1:
            return False
    return True


def _concat_subsets(group: list[_Module], whole: _Module):
    """(members in key order, dim) for every subset of two or more of ``group`` that concatenates into
    ``whole`` (``_concat_dim``), each set once."""
    from itertools import combinations

    for n in range(2, len(group) + 1):
        for subset in combinations(group, n):
            dim = _concat_dim(list(subset), whole)
            if dim is not None:
                yield list(subset), dim


def _concat_dim(group: list[_Module], whole: _Module) -> int | None:
    """The dim along which each leaf of ``group`` concatenates into ``whole``'s leaf, if any."""
    leaves = list(whole.leaves)
    if any(set(g.leaves) != set(leaves) for g in group):
        return None
    dims = None
    for leaf in leaves:
        shapes = [g.leaves[leaf].shape for g in group]
        want = whole.leaves[leaf].shape
        ok = set()
        for d in range(len(want)):
            if all(len(s) == len(want) and all(s[k] == want[k] for k in range(len(want)) if k != d)
                   for s in shapes) and sum(s[d] for s in shapes) == want[d]:
                ok.add(d)
        dims = ok if dims is None else dims & ok
    if not dims:
        return None
    return min(dims)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
MODULATION_TOKENS = frozenset({"mod", "modulation", "ada", "adaln", "scale", "shift", "shift_table", "table"})


def _flag_row_order(out: list[Correspondence], source: Mapping[str, TensorInfo],
                    target: Mapping[str, TensorInfo]) -> None:
    """Mark renames that could hide a row permutation: modulation-like tensors (adaLN, scale/shift
    tables) whose rows are a few chunks of the model width, where a converter may swap shift and scale;
    and gated projections (a [2h, d] input whose down projection nearby takes h: SwiGLU/GEGLU halves,
    which layouts order gate-first or value-first). Names and shapes cannot see a swap; values can."""
    widths = defaultdict(int)  # the model width: the commonest input dim of matrices (not of norm vectors)
    for info in list(source.values()) + list(target.values()):
        if len(info.shape) >= 2:
            widths[info.shape[-1]] += 1
    width = max(widths, key=widths.get) if widths else 0
    under: dict[str, set[tuple[int, ...]]] = defaultdict(set)  # ancestor -> 2-D target shapes below it
    for k, info in target.items():
        if len(info.shape) == 2:
            for anc in ancestors(k)[:4]:
                under[anc].add(tuple(info.shape))
    for i, c in enumerate(out):
        shape = tuple(target[c.targets[0]].shape)
        if c.kind == "rename" and not (c.by_values or c.exact) and len(shape) == 2 and shape[0] % 2 == 0 \
                and any((shape[1], shape[0] // 2) in under[a] for a in ancestors(c.targets[0])[1:4]):
            out[i] = Correspondence(**{**c.__dict__, "row_order": 2})
            continue
        if c.kind != "rename" or c.by_values or c.exact or not width:
            continue
        shape = tuple(target[c.targets[0]].shape)
        tokens = {t.lower() for t in name_tokens(c.sources[0]) + name_tokens(c.targets[0])}
        # chunks of the width: rows of a [k*w, w] projection, or the leading dims of a [1, k, w] table
        k = _numel(shape[:-1]) if len(shape) >= 2 and shape[-1] == width else 0
        if not 2 <= k <= 9:
            k = shape[0] // width if shape and shape[0] % width == 0 else 0
        if 2 <= k <= 9 and tokens & MODULATION_TOKENS:
            out[i] = Correspondence(**{**c.__dict__, "row_order": k})


def exact_name_pairs(source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo]) -> dict[str, str]:
    """Source key -> target key where the names are equal once a common leading prefix (whole dotted
    segments, on either side) is removed and the shapes are equal. Equal full names always count; a
    non-empty prefix counts only when it explains a quarter of the smaller key set in at least two modules
    (a layout-wide prefix such as ``model.diffusion_model.``), never one module or two: a Diffusers VAE's
    ``up_blocks.2.resnets.0.conv1`` is not the official top-level ``conv1``. The best-supported prefixes
    claim keys first, each key at most once."""
    support: dict[tuple[str, str], int] = defaultdict(int)
    modules: dict[tuple[str, str], set[str]] = defaultdict(set)  # the modules (parents) a prefix explains
    for keys, other, flip in ((source, target, False), (target, source, True)):
        for key in keys:
            parts = key.split(".")
            for i in range(len(parts)):
                rest = ".".join(parts[i:])
                if rest in other:
                    prefix = ".".join(parts[:i]) + ("." if i else "")
                    pair = ("", prefix) if flip else (prefix, "")
                    support[pair] += 1
                    modules[pair].add(parent(rest))
    pairs: dict[str, str] = {}
    claimed: set[str] = set()
    floor = max(2, min(len(source), len(target)) // 4)
    for (ps, pt), n in sorted(support.items(), key=lambda kv: (-kv[1], kv[0])):
        if (ps or pt) and (n < floor or len(modules[(ps, pt)]) < 2):
            continue
        for s in source:
            if s in pairs or not s.startswith(ps):
                continue
            t = pt + s[len(ps):]
            if t in target and t not in claimed and tuple(source[s].shape) == tuple(target[t].shape):
                pairs[s] = t
                claimed.add(t)
    return pairs


def infer(source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo],
          decided: Sequence[Correspondence] = ()) -> Inference:
    """Infer the correspondences between two key sets (``name -> TensorInfo``, in key order).
    ``decided``: correspondences already settled by stronger evidence (equal values); the rest is inferred."""
    t0 = time.perf_counter()
    done_s = {s for c in decided for s in c.sources}
    done_t = {t for c in decided for t in c.targets}
    exact = exact_name_pairs({k: v for k, v in source.items() if k not in done_s},
                             {k: v for k, v in target.items() if k not in done_t})
    done_s |= set(exact)
    done_t |= set(exact.values())
    m = _Matcher({k: v for k, v in source.items() if k not in done_s},
                 {k: v for k, v in target.items() if k not in done_t}, all_target=target, all_source=source)
    settled = list(decided) + [Correspondence("rename", (s,), (t,), exact=True) for s, t in exact.items()]
    for c in settled:  # context for what the evidence leaves open: where matched subtrees went
        for s in c.sources:
            for t in c.targets:
                m.ctx.add(parent(s), parent(t))
    m.out.extend(settled)
    m.run()
    _flag_row_order(m.out, source, target)
    pos = {k: i for i, k in enumerate(target)}
    corr = sorted(m.out, key=lambda c: min(pos.get(t, 0) for t in c.targets))
    return Inference(corr, m.unresolved, m.src_informative, m.tgt_informative,
                     seconds=time.perf_counter() - t0)
