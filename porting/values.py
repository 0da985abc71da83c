"""Value evidence for ``port diff-keys --match-values``: when both sides hold real tensors (an official
release and the same model's Diffusers repo), equal contents decide what names cannot.

Every tensor is fingerprinted in bounded memory: its rows (dim 0) are read in blocks and each row gets a
64-bit digest (a multiply-add hash over the row's 32-bit words, vectorized); the tensor's digest is the hash
of its row digests and shape-free, so a reshape keeps it. Floating tensors are hashed as bf16, so an fp32
release matches a bf16 conversion of itself. From the digests, decisive matches:

- **same**: a target's content equals exactly one source tensor's (a rename; a reshape when shapes differ;
  a tie when one source feeds several targets);
- **split / merge**: a target's rows are one contiguous run of a source's rows (a slice), or a target is
  the source tensors' rows end to end: the sizes come out exact, equal or not;
- **reorder**: a target holds a source's rows as equal chunks in another order (adaLN shift/scale halves
  swapped): a rename with a row permutation.

Contents shared by several tensors on a side (all-ones norms, zero biases) are no evidence: those keys
are left to names and shapes.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from vidport.porting.sources import StateDictSource

BLOCK_ELEMENTS = 1 << 22  # rows are hashed in blocks of about this many elements: memory stays bounded
_RNG = np.random.default_rng(0x5EED)
_MUL = {}


def _multipliers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _MUL:
        a = _RNG.integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)
        b = _RNG.integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)
        _MUL[n] = (a, b)
    return _MUL[n]


@dataclass(frozen=True)
class Fingerprint:
    name: str
    shape: tuple[int, ...]
    digest: str  # of the row digests: equal contents, whatever the shape
    rows: np.ndarray  # uint64 digest per row along dim 0 (a 0-d or 1-d tensor: one per element)


def _row_digests(flat_rows) -> np.ndarray:
    """uint64 digest of each row of a 2-D uint16 array (bf16 bits): the row read as 32-bit words, each
    times a fixed random odd 64-bit multiplier, summed mod 2**64 (one pass; 64 bits make a collision
    among millions of rows negligible), then mixed."""
    if flat_rows.shape[1] % 2:
        flat_rows = np.concatenate([flat_rows, np.zeros((flat_rows.shape[0], 1), np.uint16)], axis=1)
    words = np.ascontiguousarray(flat_rows).view(np.uint32)
    a, _ = _multipliers(words.shape[1])
    with np.errstate(over="ignore"):
        h = (words.astype(np.uint64) * a).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        return h ^ (h >> np.uint64(29))


def fingerprint(source: StateDictSource, name: str) -> Fingerprint:
    """A tensor's fingerprint, read block by block of rows."""
    import torch

    t = source.get(name)
    shape = tuple(t.shape)
    rows = t.reshape(shape[0], -1) if t.dim() >= 2 else t.reshape(-1, 1)
    width = max(1, rows.shape[1])
    step = max(1, BLOCK_ELEMENTS // width)
    out = []
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        if block.is_floating_point():
            bits = block.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        else:
            bits = block.contiguous().view(torch.uint8).numpy().view(np.uint8).astype(np.uint16)
        out.append(_row_digests(bits.reshape(bits.shape[0], -1)))
    rows_bits = np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)
    release = getattr(source, "release", None)
    if release is not None:
        release(t)
    digest = hashlib.blake2b(rows_bits.tobytes(), digest_size=16).hexdigest()
    return Fingerprint(name, shape, digest, rows_bits)


def fingerprints(source: StateDictSource, log: Callable[[str], None] | None = None) -> dict[str, Fingerprint]:
    t0 = time.perf_counter()
    out = {name: fingerprint(source, name) for name in source.keys()}
    if log:
        log(f"fingerprinted {len(out)} tensors of {source.description} in {time.perf_counter() - t0:.2f} s")
    return out


@dataclass(frozen=True)
class ValueMatch:
    kind: str  # rename | reshape | tie | split | merge | reorder
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    sizes: tuple[int, ...] = ()  # split/merge: rows of each part
    perm: tuple[int, ...] = ()  # reorder: target chunk i is source chunk perm[i]


def match_values(src: Mapping[str, Fingerprint], tgt: Mapping[str, Fingerprint]) -> list[ValueMatch]:
    """Decisive matches by content (see the module docstring). Keys shared by several tensors with the
    same content on a side are left out."""
    by_digest_s: dict[str, list[str]] = defaultdict(list)
    by_digest_t: dict[str, list[str]] = defaultdict(list)
    for k, fp in src.items():
        by_digest_s[fp.digest].append(k)
    for k, fp in tgt.items():
        by_digest_t[fp.digest].append(k)
    out: list[ValueMatch] = []
    done_t: set[str] = set()
    done_s: set[str] = set()
    # 1. whole tensors with unique contents
    for digest, targets in by_digest_t.items():
        sources = by_digest_s.get(digest, [])
        if len(sources) != 1 or len(targets) < 1:
            continue
        s = sources[0]
        if len(targets) > 1:
            if all(tgt[t].shape == src[s].shape for t in targets):
                out.append(ValueMatch("tie", (s,), tuple(targets)))
            else:
                continue
        else:
            t = targets[0]
            out.append(ValueMatch("rename" if tgt[t].shape == src[s].shape else "reshape", (s,), (t,)))
        done_s.add(s)
        done_t.update(targets)
    # 2. slices: a target's rows are a contiguous run of one source's rows (splits), and
    #    merges: a target's rows are several sources end to end
    out += _slices(src, tgt, done_s, done_t)
    # 3. reorders: equal chunks of a source's rows in another order
    out += _reorders(src, tgt, done_s, done_t)
    return out


def _row_index(fps: Mapping[str, Fingerprint], skip: set[str]) -> dict[int, list[tuple[str, int]]]:
    index: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for k, fp in fps.items():
        if k in skip:
            continue
        for i, r in enumerate(fp.rows.tolist()):
            index[r].append((k, i))
    return index


def _run_at(rows: np.ndarray, fp: Fingerprint, start: int) -> bool:
    n = len(rows)
    return start + n <= len(fp.rows) and bool(np.array_equal(fp.rows[start:start + n], rows))


def _tilings(wholes: Mapping[str, Fingerprint], pieces: Mapping[str, Fingerprint], done_wholes: set[str],
             done_pieces: set[str]) -> list[tuple[str, list[str], list[int]]]:
    """(whole, pieces in row order, their row counts) where each piece is a unique contiguous run of one
    whole's rows and the pieces tile that whole exactly, in order, without overlap."""
    index = _row_index(wholes, done_wholes)
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)  # whole -> (start row, piece)
    for p, fp in pieces.items():
        if p in done_pieces or len(fp.rows) == 0:
            continue
        hits = {(w, i) for w, i in index.get(int(fp.rows[0]), []) if _run_at(fp.rows, wholes[w], i)
                and wholes[w].shape[1:] == fp.shape[1:] and len(wholes[w].rows) > len(fp.rows)}
        if len(hits) == 1:
            w, i = hits.pop()
            runs[w].append((i, p))
    out = []
    for w, parts in runs.items():
        parts.sort()
        sizes = [len(pieces[p].rows) for _, p in parts]
        starts = [i for i, _ in parts]
        if len(parts) > 1 and starts[0] == 0 and all(a + n == b for a, n, b in zip(starts, sizes, starts[1:])) \
                and starts[-1] + sizes[-1] == len(wholes[w].rows):
            out.append((w, [p for _, p in parts], sizes))
            done_wholes.add(w)
            done_pieces.update(p for _, p in parts)
    return out


def _slices(src, tgt, done_s: set[str], done_t: set[str]) -> list[ValueMatch]:
    """Splits (targets tile a source) and merges (sources tile a target)."""
    splits = _tilings(src, tgt, done_s, done_t)
    merges = _tilings(tgt, src, done_t, done_s)
    return [ValueMatch("split", (s,), tuple(ts), sizes=tuple(n)) for s, ts, n in splits] + \
        [ValueMatch("merge", tuple(ss), (t,), sizes=tuple(n)) for t, ss, n in merges]


def _reorders(src, tgt, done_s: set[str], done_t: set[str]) -> list[ValueMatch]:
    """A target whose rows are a source's rows in equal chunks, permuted (the smallest chunk count)."""
    out = []
    by_multiset: dict[tuple, list[str]] = defaultdict(list)
    for s, fp in src.items():
        if s not in done_s and len(fp.rows) > 1:
            by_multiset[(fp.shape, tuple(sorted(fp.rows.tolist())))].append(s)
    for t, fp in tgt.items():
        if t in done_t or len(fp.rows) < 2:
            continue
        cands = by_multiset.get((fp.shape, tuple(sorted(fp.rows.tolist()))), [])
        if len(cands) != 1:
            continue
        s = cands[0]
        n = len(fp.rows)
        for k in range(2, n + 1):
            if n % k:
                continue
            size = n // k
            chunks_s = [src[s].rows[i * size:(i + 1) * size] for i in range(k)]
            perm = []
            for i in range(k):
                chunk = fp.rows[i * size:(i + 1) * size]
                match = [j for j, c in enumerate(chunks_s) if np.array_equal(c, chunk) and j not in perm]
                if len(match) != 1:
                    break
                perm.append(match[0])
            if len(perm) == k and perm != list(range(k)):
                out.append(ValueMatch("reorder", (s,), (t,), perm=tuple(perm)))
                done_s.add(s)
                done_t.add(t)
                break
    return out
