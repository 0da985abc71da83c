"""The porting half of vidport's Python API (``vidport.diff_keys``, ``vidport.convert``): what the
``port diff-keys`` and ``port convert`` commands run, without the command line."""

from __future__ import annotations

from pathlib import Path

from vidport.errors import UserError


def diff_keys(source: str, target: str, *, component: str | None = None, match_values: bool = False):
    """Diff the keys of two state-dict specs and infer the name map from SOURCE to TARGET.

    ``source``/``target`` take every form ``port diff-keys`` does (a path, ``hf:ORG/NAME``,
    ``native:FAMILY-PRESET[/COMP]``, ``class:MODULE.Class[@CONFIG.json]``, ``keys:FILE.txt``). Returns a
    ``KeyDiff`` (``.name_map``, ``.to_json()``, ``format_report``). ``match_values``: both sides hold real
    tensors; equal contents decide first (``porting.values``)."""
    from vidport.porting.diffkeys import diff_keys as run_diff
    from vidport.porting.sources import open_source

    if match_values:
        for spec in (source, target):
            if spec.startswith(("keys:", "native:", "class:")):
                raise UserError(f"--match-values needs tensors on both sides; {spec} holds names and shapes "
                                "only (pass a checkpoint file or folder)")
    return run_diff(open_source(source, component), open_source(target, component), match_values=match_values)


def write_map(result, path: Path, provenance: str) -> None:
    """Write a diff's name map to ``path`` with a provenance line under its header."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        head, _, body = result.name_map.dumps().partition("\n")
        checks = "".join(f"# check part order: {', '.join(w['sources'])} -> {','.join(w['parts'])} is the attention "
                         "convention (q, k, v, then the rest), not evidence; --match-values or parity decides\n"
                         for w in _first_per_rule(result))
        path.write_text(f"{head}\n{provenance}\n{checks}{body}")
    except OSError as e:
        raise UserError(f"{path}: cannot write the map ({e.strerror})") from None


def _first_per_rule(result) -> list[dict]:
    """One part-order warning per distinct set of parts (not one per block)."""
    seen, out = set(), []
    for w in result.part_order_warnings():
        if tuple(w["parts"]) not in seen:
            seen.add(tuple(w["parts"]))
            out.append(w)
    return out


def convert(release: str | Path, out: str | Path, *, family: str, dtype: str = "keep",
            max_shard_size: str | int = "5GB", force: bool = False, maps: dict[str, Path] | None = None,
            targets: str = "auto", progress: bool = False):
    """Convert an official release into a Diffusers-format repo at ``out`` (streaming, atomic, strict),
    as ``port convert`` does. Returns one ``ComponentReport`` per component."""
    from vidport.porting.convert import ConvertError, execute, parse_size, plan_release

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise ConvertError(f"{out} already exists; pass --force to replace it (the old one is removed only "
                           "after the new one is complete)")
    size = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    plan = plan_release(release, family, dtype=dtype, max_shard_size=size, maps=dict(maps or {}), defer=True,
                        targets_from=targets)
    return execute(plan, out, force=force, progress=progress)
