"""Generalization benchmark of `port diff-keys` (issue 18): the inferred name map of model families other than
Wan, scored against diffusers' own converters.

    python benchmarks/bench_diff_keys.py [--family flux] [--in-process] [--reverse | --alphabetical] [--show N] [--json]

Per family (tests/data/diffkeys_families/<family>/: the official class's keys, the Diffusers class's keys, and
truth.json traced from diffusers' converter; SOURCE.md says how each was made) it runs
``port diff-keys keys:official_keys.txt keys:diffusers_keys.txt --json`` in a child process (``--in-process``:
``vidport.porting.api.diff_keys`` in this one) and scores every Diffusers key:

- **correct**: made from the right official tensor(s) the right way: a rename from the right key; a split part
  at the right offset of the right fused tensor; a merge of the right tensors in the right order; a tensor whose
  rows the converter permutes only with the converter's permutation (a rename with ``perm``, the chunk order,
  or a ``reorder`` transform with ``blocks``, the official row ranges in the Diffusers row order as truth.json
  writes them);
- **wrong** (confident): mapped, but not like that (a permuted tensor mapped as a plain rename is wrong: its rows
  would load silently permuted);
- **unresolved**: not mapped (left to the user, with or without candidates), or a permuted tensor mapped from
  the right key with a row-order warning (``row_order_warnings``) and no permutation: flagged for a check.

``splits`` counts the fused official tensors whose split was found with the right parts in the right order
(so the right sizes); ``reorders`` the permuted tensors that the inference flagged (a ``perm``, a ``reorder``
transform, a row-order warning, or an unresolved entry naming the key or its official tensor). ``seconds`` is
the child process's wall time (``--in-process``: the inference's own seconds). ``--json`` also gives
``false_row_order_warnings``: correct renames flagged for a row-order check whose rows are in order.

Targets (issue 18): 0 confident wrong keys per family, >= 95% of all keys correct and >= 90% per family, every
split found with the right sizes, each case < 10 s as the wall time of a `port diff-keys` process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "diffkeys_families"


def families() -> list[str]:
    return sorted(p.name for p in DATA.iterdir() if (p / "truth.json").is_file())


@dataclass
class FamilyScore:
    family: str
    keys: int
    correct: int = 0
    wrong: int = 0
    unresolved: int = 0
    splits_found: int = 0
    splits: int = 0
    reorders_flagged: int = 0
    reorders: int = 0
    seconds: float = 0.0
    false_row_order_warnings: int = 0  # correct renames flagged "check row order" whose rows are in order
    error: str | None = None  # the inference failed: every key counts as unresolved
    wrong_keys: list[str] = field(default_factory=list)  # "diffusers key: predicted; truth" lines
    unresolved_keys: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.keys if self.keys else 1.0


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------
def _predictions(result: dict) -> dict[str, dict]:
    """Diffusers key -> how the inference makes it: {kind, sources, ...} from ``KeyDiff.to_json()``."""
    pred: dict[str, dict] = {}
    for t in result["transforms"]:
        if t["kind"] == "split":
            for k, target in enumerate(t["targets"]):
                pred[target] = {"kind": "split", "sources": t["sources"], "parts": t["targets"], "index": k,
                                "dim": t.get("dim", 0)}
        else:
            for target in t["targets"]:
                pred[target] = {**t, "sources": t["sources"]}
    for source, targets in result["mapped"].items():
        for target in targets:
            pred.setdefault(target, {"kind": "rename", "sources": [source]})
    return pred


def _describe(p: dict | None) -> str:
    if p is None:
        return "unmapped"
    extra = f" part {p['index']} of {len(p['parts'])}" if p["kind"] == "split" else ""
    extra += f" perm {p['perm']}" if p.get("perm") else ""
    return f"{p['kind']} of {', '.join(p['sources'])}{extra}"


def _truth_text(e: dict) -> str:
    return f"{e['kind']} of " + ", ".join(f"{s}[{a}:{b}]" for s, a, b in e["pieces"])


def _perm(blocks: list[list[int]]) -> list[int] | None:
    """Row blocks of equal size -> the chunk order (``perm``), as the inference states a reordered rename."""
    size = blocks[0][1] - blocks[0][0]
    if any(b - a != size or a % size for a, b in blocks):
        return None
    return [a // size for a, _ in blocks]


def _is_correct(e: dict, p: dict, shapes: dict[str, tuple[int, ...]]) -> bool:
    kind, pieces = e["kind"], e["pieces"]
    sources = list(dict.fromkeys(s for s, _, _ in pieces))
    if "reshape" in e:
        return p["kind"] == "reshape" and p["sources"] == sources
    if kind in ("rename", "tie"):
        return p["kind"] in ("rename", "tie") and p["sources"] == sources and not p.get("perm")
    if kind == "split":
        if p["kind"] != "split" or p["sources"] != sources or p.get("dim", 0) != 0:
            return False
        offset = sum(shapes[t][0] for t in p["parts"][:p["index"]])
        return offset == pieces[0][1]
    if kind == "merge":
        return p["kind"] == "merge" and p["sources"] == sources and p.get("dim", 0) == 0
    if "reorder" in kind:
        blocks = [[a, b] for _, a, b in pieces]
        if p["sources"] != sources:
            return False
        if p["kind"] == "reorder":
            return p.get("blocks") == blocks
        return p["kind"] == "rename" and p.get("perm") is not None and p["perm"] == _perm(blocks)
    return False


def score(truth: dict, result: dict, shapes: dict[str, tuple[int, ...]], seconds: float) -> FamilyScore:
    """Score one ``port diff-keys --json`` result against the family's truth.json."""
    pred = _predictions(result)
    unresolved_names = {u["key"] for u in result["unresolved"]}
    warned = {w["target"] for w in result.get("row_order_warnings", [])}
    s = FamilyScore(truth["family"], len(truth["targets"]) + len(truth.get("unfilled", [])),
                    seconds=round(seconds, 3))
    for key, e in truth["targets"].items():
        p = pred.get(key)
        if p is None:
            s.unresolved += 1
            s.unresolved_keys.append(f"{key}: truth {_truth_text(e)}")
        elif _is_correct(e, p, shapes):
            s.correct += 1
            s.false_row_order_warnings += key in warned and "reorder" not in e["kind"]
        elif "reorder" in e["kind"] and key in warned and not p.get("perm"):
            # the right tensor, its rows flagged for a check: left to the user, not a confident answer
            s.unresolved += 1
            s.unresolved_keys.append(f"{key}: predicted {_describe(p)} with a row-order warning; truth "
                                     f"{_truth_text(e)}")
        else:
            s.wrong += 1
            s.wrong_keys.append(f"{key}: predicted {_describe(p)}; truth {_truth_text(e)}")
    for key in truth.get("unfilled", []):  # no official tensor makes it: correct only if nothing is mapped onto it
        if key in pred:
            s.wrong += 1
            s.wrong_keys.append(f"{key}: predicted {_describe(pred[key])}; truth: not made by the converter")
        else:
            s.correct += 1
    found = {(tuple(t["sources"]), tuple(t["targets"])) for t in result["transforms"]
             if t["kind"] == "split" and t.get("dim", 0) == 0}
    s.splits = len(truth["splits"])
    s.splits_found = sum(((split["source"],), tuple(split["targets"])) in found for split in truth["splits"])
    s.reorders = len(truth["reorders"])
    s.reorders_flagged = sum(
        pred.get(r["target"], {}).get("kind") == "reorder" or bool(pred.get(r["target"], {}).get("perm"))
        or r["target"] in warned or r["target"] in unresolved_names or r["source"] in unresolved_names
        for r in truth["reorders"])
    return s


def reverse_truth(truth: dict, official: dict[str, tuple[int, ...]]) -> dict:
    """The truth of the opposite direction (Diffusers -> official), derived row by row from the converter's:
    each official key's rows in order, as pieces of Diffusers keys. One Diffusers source read whole in order
    is a rename, out of order a reorder, in part a split (the converter's merges' inverse); several whole
    sources are a merge. Keys the converter drops are made by nothing; Diffusers keys it leaves unfilled
    feed nothing."""
    rows: dict[str, list[tuple[int, str, int, int]]] = {}
    for key, e in truth["targets"].items():
        off = 0
        for src, a, b in e["pieces"]:
            rows.setdefault(src, []).append((a, key, off, off + b - a))
            off += b - a
    targets, splits, reorders = {}, {}, []
    for o in official:
        if o in truth["dropped"] or o not in rows:
            continue
        pieces = [[d, a, b] for _, d, a, b in sorted(rows[o])]
        sources = list(dict.fromkeys(d for d, _, _ in pieces))
        if len(sources) > 1:
            kind = "merge"
        elif len(pieces) > 1 and [a for _, a, _ in pieces] != sorted(a for _, a, _ in pieces):
            kind = "reorder"
            reorders.append({"source": sources[0], "target": o, "blocks": [[a, b] for _, a, b in pieces]})
        elif pieces[0][1] == 0 and sum(b - a for _, a, b in pieces) == truth_rows(truth, sources[0]):
            kind = "rename"
        else:
            kind = "split"
            splits.setdefault(sources[0], []).append((pieces[0][1], o, sum(b - a for _, a, b in pieces)))
        targets[o] = {"kind": kind, "pieces": pieces}
    return {"family": truth["family"], "targets": targets, "unfilled": sorted(truth["dropped"]),
            "splits": [{"source": d, "targets": [o for _, o, _ in sorted(parts)],
                        "sizes": [n for _, _, n in sorted(parts)], "dim": 0} for d, parts in splits.items()],
            "merges": [{"sources": list(dict.fromkeys(d for d, _, _ in e["pieces"])), "target": o}
                       for o, e in targets.items() if e["kind"] == "merge"],
            "reorders": reorders}


def truth_rows(truth: dict, diffusers_key: str) -> int:
    """A Diffusers key's row count, from the converter's pieces."""
    return sum(b - a for _, a, b in truth["targets"][diffusers_key]["pieces"])


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
def listings(family: str) -> tuple[str, str]:
    folder = DATA / family
    return f"keys:{folder / 'official_keys.txt'}", f"keys:{folder / 'diffusers_keys.txt'}"


def sorted_listing(path: Path) -> Path:
    """The listing with its keys sorted by name (what a safetensors header gives: no module order), in a
    temporary file."""
    import tempfile

    lines = path.read_text().splitlines()
    head = [x for x in lines if x.startswith("#")]
    body = sorted(x for x in lines if x and not x.startswith("#"))
    out = Path(tempfile.mkdtemp()) / path.name
    out.write_text("\n".join(head + body) + "\n")
    return out


def run_family(family: str, *, in_process: bool = False, reverse: bool = False,
               alphabetical: bool = False) -> FamilyScore:
    """Score one family; ``reverse``: Diffusers -> official (the listings swapped, the truth inverted);
    ``alphabetical``: the official listing sorted by name, as a safetensors file lists it."""
    from vidport.porting.sources import KeysFileSource

    source, target = listings(family)
    if alphabetical:
        source = f"keys:{sorted_listing(DATA / family / 'official_keys.txt')}"
    truth = json.loads((DATA / family / "truth.json").read_text())
    shapes = KeysFileSource(DATA / family / "diffusers_keys.txt").shapes()
    if reverse:
        source, target = target, source
        shapes = KeysFileSource(DATA / family / "official_keys.txt").shapes()
        truth = reverse_truth(truth, shapes)
    t0 = time.perf_counter()
    if in_process:
        from vidport.porting.api import diff_keys

        try:
            d = diff_keys(source, target)
            result, seconds = d.to_json(), d.seconds
        except Exception as e:  # a crash is a result of the benchmark, not the end of it
            return failed(truth, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
    else:
        r = subprocess.run([sys.executable, "-m", "vidport.porting.cli", "diff-keys", source, target, "--json"],
                           capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        try:
            result = json.loads(r.stdout)
        except json.JSONDecodeError:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return failed(truth, f"port diff-keys exited {r.returncode}: {last}", seconds)
    return score(truth, result, shapes, seconds)


def failed(truth: dict, error: str, seconds: float) -> FamilyScore:
    keys = len(truth["targets"]) + len(truth.get("unfilled", []))
    return FamilyScore(truth["family"], keys, unresolved=keys, splits=len(truth["splits"]),
                       reorders=len(truth["reorders"]), seconds=round(seconds, 3), error=error)


def table(scores: list[FamilyScore]) -> str:
    head = f"{'family':<14} {'keys':>5} {'correct':>8} {'wrong':>6} {'unres.':>6} {'splits':>9} {'reorders':>9} " \
           f"{'seconds':>8}"
    lines = [head, "-" * len(head)]
    for s in scores:
        lines.append(f"{s.family:<14} {s.keys:>5} {s.correct:>8} {s.wrong:>6} {s.unresolved:>6} "
                     f"{f'{s.splits_found}/{s.splits}':>9} {f'{s.reorders_flagged}/{s.reorders}':>9} "
                     f"{s.seconds:>8.2f}   {100 * s.accuracy:5.1f}% correct"
                     + (f"  FAILED: {s.error}" if s.error else ""))
    keys, correct = sum(s.keys for s in scores), sum(s.correct for s in scores)
    lines.append("-" * len(head))
    lines.append(f"{'all':<14} {keys:>5} {correct:>8} {sum(s.wrong for s in scores):>6} "
                 f"{sum(s.unresolved for s in scores):>6} "
                 f"{f'{sum(s.splits_found for s in scores)}/{sum(s.splits for s in scores)}':>9} "
                 f"{f'{sum(s.reorders_flagged for s in scores)}/{sum(s.reorders for s in scores)}':>9} "
                 f"{max((s.seconds for s in scores), default=0):>8.2f}   "
                 f"{100 * correct / max(keys, 1):5.1f}% correct (seconds: the slowest)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", action="append", default=[], help="only these families (repeatable)")
    ap.add_argument("--in-process", action="store_true",
                    help="call vidport.porting.api.diff_keys here instead of timing a `port diff-keys` process")
    ap.add_argument("--show", type=int, default=0, metavar="N",
                    help="also list up to N wrong and N unresolved keys per family")
    ap.add_argument("--alphabetical", action="store_true",
                    help="the official listings sorted by name (a safetensors header's order: no module order)")
    ap.add_argument("--reverse", action="store_true",
                    help="the opposite direction: Diffusers -> official, against the inverted converter truth")
    ap.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = ap.parse_args(argv)
    names = families()
    if unknown := set(args.family) - set(names):
        ap.error(f"unknown families {sorted(unknown)}; known: {names}")
    scores = [run_family(f, in_process=args.in_process, reverse=args.reverse, alphabetical=args.alphabetical)
              for f in names if not args.family or f in args.family]
    if args.json:
        print(json.dumps([{**asdict(s), "wrong_keys": s.wrong_keys[:args.show],
                           "unresolved_keys": s.unresolved_keys[:args.show]} for s in scores], indent=1))
        return 0
    print(table(scores))
    for s in scores if args.show else []:
        for title, items in (("wrong", s.wrong_keys), ("unresolved", s.unresolved_keys)):
            if items:
                print(f"\n{s.family}: {title} ({len(items)}):")
                print("\n".join(f"  {x}" for x in items[:args.show]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
