"""`port convert`: an official release -> a Diffusers-format repo (streaming, atomic, strict)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from vidport.porting.api import convert as run
from vidport.porting.convert import DTYPES, TARGETS_FROM, parse_size, plan_release, summary_table
from vidport.porting.options import json_option, progress_option, show_progress


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--family", required=True, help="Model family of the release (`port info` lists them), e.g. "
              "wan2.1-t2v or ltx-video.")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="Target folder, e.g. converted_weights/NAME (created atomically).")
@click.option("--dtype", default="keep", show_default=True, metavar="|".join(DTYPES),
              help="Cast floating tensors; keep-in-fp32 modules (norms, modulation, time embedding) are never "
                   "cast down.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Shard a component's weights above this size (5GB, 500MB, 2GiB).")
@click.option("--force", is_flag=True, help="Replace an existing --out (the old one is removed only after the "
                                            "new one is complete).")
@click.option("--emit-script", "emit_script", type=click.Path(path_type=Path), default=None,
              help="Write a standalone Python script (needs only torch) that performs this same "
                   "conversion, and exit without converting.")
@click.option("--map", "map_overrides", multiple=True, metavar="COMPONENT=FILE",
              help="Use this name map for a component instead of the family's committed one (repeatable).")
@click.option("--targets", "targets_from", default="auto", show_default=True, type=click.Choice(TARGETS_FROM),
              help="What the conversion is checked against: auto = the Diffusers layout vidport ships for the "
                   "family's published configs (verified against diffusers/transformers by its tests), else "
                   "the models of the installed diffusers/transformers; libraries = always those models.")
@progress_option()
@json_option("the summary")
def convert(source: Path, family: str, out: Path, dtype: str, max_shard_size: str, force: bool,
            emit_script: Path | None, map_overrides: tuple[str, ...], targets_from: str, progress: bool,
            as_json: bool) -> None:
    """Convert the official release SOURCE into a Diffusers-format repo at --out.

    \b
    Every source tensor is used exactly once or dropped on purpose by the family's committed
    official->Diffusers map, and every parameter of the Diffusers models is written with its shape.
    Tensors stream one at a time; the repo appears at --out only when complete. The target side
    (shapes of the Diffusers models, config files) of the published configs ships with vidport; any
    other is built with diffusers/transformers and memoised in $VIDPORT_CACHE_DIR (default
    ~/.cache/vidport; empty: off), so converting that model again skips importing them.

    \b
    Examples:
      port convert official_weights/wan2.1-t2v-tiny --family wan2.1-t2v --out converted_weights/wan2.1-t2v-tiny
      port convert official_weights/ltx-video-tiny --family ltx-video --out converted_weights/ltx-video-tiny
    """
    maps = {}
    for item in map_overrides:
        component, sep, path = item.partition("=")
        if not sep or not path:
            raise click.BadParameter(f"{item!r}: expected COMPONENT=FILE", param_hint="--map")
        maps[component] = Path(path)
    if emit_script is not None:
        from vidport.porting.emit_script import write_script

        plan = plan_release(source, family, dtype=dtype, max_shard_size=parse_size(max_shard_size), maps=maps,
                            defer=False, targets_from=targets_from)
        if plan.hasher is not None:
            plan.hasher.cancel()  # the script hashes nothing here
        write_script(plan, emit_script, out)
        click.echo(f"wrote {emit_script}: python {emit_script} {source} {out}")
        return
    # the check against the target models runs while unchanged tensors stream
    reports = run(source, out, family=family, dtype=dtype, max_shard_size=max_shard_size, force=force, maps=maps,
                  targets=targets_from, progress=show_progress(progress))
    if as_json:
        click.echo(json.dumps({"out": str(out), "components": [asdict(r) for r in reports]}, indent=2))
    else:
        click.echo(summary_table(reports))
        click.echo(f"wrote {out} (conversion.json records the sources, maps and dtype changes)", file=sys.stdout)
