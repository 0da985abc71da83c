"""`port diff-keys SOURCE TARGET`: key diff and the inferred name map."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from vidport.porting.options import json_option


@click.command("diff-keys")
@click.argument("source")
@click.argument("target")
@click.option("--component", default=None,
              help="Component to read from a Diffusers repo, an official release folder or a native: model "
                   "(transformer, vae, text_encoder).")
@click.option("--match-values", is_flag=True,
              help="Both sides hold real tensors (e.g. an official release and its Diffusers repo): fingerprint "
                   "them and let equal contents decide, including splits, merges and reordered rows.")
@json_option("one object (counts, rules, transforms, unresolved, complete) instead of the report")
@click.option("--write-map", "write_map", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the inferred name map to FILE (the format NameMap.load, the loader and convert read).")
def diff_keys(source: str, target: str, component: str | None, match_values: bool, as_json: bool,
              write_map: Path | None) -> None:
    """Diff the keys of SOURCE and TARGET and infer the name map from SOURCE to TARGET.

    Exit status 0 when the map is complete (every source key used or dropped on purpose, every target
    key produced, nothing unresolved), 1 when it is not, 2 on bad input. What names and shapes cannot prove
    is mapped and flagged, not counted as unresolved: "check row order" (a table whose chunks a converter may
    swap) and "check part order" (a tensor fused across modules, split in the attention convention);
    --match-values settles both.

    \b
    SOURCE and TARGET are read as names, shapes and dtypes only:
      path            .safetensors, *.safetensors.index.json, .pt/.pth/.bin, a Diffusers
                      component or repo folder (with --component), an official release folder
      hf:ORG/NAME[/SUBFOLDER]      safetensors headers of a hub repo
      native:FAMILY-PRESET[/COMP]  the native model on the meta device
      class:MODULE.Class[@CONFIG.json]  any nn.Module built on the meta device
      keys:FILE.txt   a key listing (name TAB [shape] per line)

    \b
    Example:
      port diff-keys keys:runtime/models/wan/reference/official_vae_keys.txt \\
          native:wan2.1-t2v-1.3b/vae --write-map vae.map
    """
    from vidport.porting.api import diff_keys as run_diff
    from vidport.porting.api import write_map as save_map
    from vidport.porting.diffkeys import format_report

    result = run_diff(source, target, component=component, match_values=match_values)
    if write_map is not None:
        save_map(result, write_map, f"# written by: port diff-keys {source} {target}"
                                    + (f" --component {component}" if component else "")
                                    + (" --match-values" if match_values else ""))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        click.echo(format_report(result))
        if write_map is not None:
            click.echo(f"wrote {write_map} ({len(result.name_map.rules)} rules)")
    if not result.complete:  # a map that leaves keys unmapped or unresolved is not a usable answer
        sys.exit(1)
