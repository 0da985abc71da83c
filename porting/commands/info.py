"""`port info`: what this installation can do: families and their presets and components, attention
backends and which run on this machine, and the library versions."""

from __future__ import annotations

import json

import click
from vidport.porting.options import device_option, json_option


def collect(device: str) -> dict:
    import torch
    from vidport.porting.provenance import installed_version
    from vidport.runtime.attention import BACKENDS, why_unavailable

    from vidport.devices import default_device
    from vidport.families import families

    device = default_device(device).type if device == "auto" else device
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    reasons = {b: why_unavailable(b, torch.device(device), dtype) for b in BACKENDS}
    rows = []
    for fam in families():
        rows.append({"name": fam.name, "presets": list(fam.presets), "components": list(fam.components),
                     "pipeline": fam.pipeline_class, "native": [f"native:{fam.name}-{p}" for p in fam.presets],
                     "geometry": {"frames": f"{fam.geometry.frame_stride}k+1",
                                  "size_multiple": fam.geometry.spatial_multiple}})
    return {
        "vidport": installed_version("vidport"),
        "libraries": {d: installed_version(d) for d in ("torch", "diffusers", "transformers", "safetensors")},
        "device": device,
        "families": rows,
        "dtype": str(dtype).replace("torch.", ""),
        "attention_backends": [{"name": b, "runs_here": reasons[b] is None, "why_not": reasons[b]}
                               for b in BACKENDS],
    }


def format_info(info: dict) -> str:
    lines = [f"vidport {info['vidport']}  ("
             + ", ".join(f"{k} {v}" for k, v in info["libraries"].items()) + ")", "", "families:"]
    width = max(len(f["name"]) for f in info["families"])
    for f in info["families"]:
        lines.append(f"  {f['name']:<{width}}  presets: {', '.join(f['presets'])}   "
                     f"components: {', '.join(f['components'])}")
    lines += ["", f"attention backends on {info['device']} in {info['dtype']} (auto picks among those that run):"]
    for b in info["attention_backends"]:
        lines.append(f"  {b['name']:<16} {'runs here' if b['runs_here'] else '-  ' + b['why_not']}")
    return "\n".join(lines)


@click.command("info")
@device_option("auto", "Device whose attention backends are listed")
@json_option("the same")
def info(device: str, as_json: bool) -> None:
    """List the model families (presets, components), the attention backends and which run here, and
    the installed library versions.

    \b
    Example:
      port info --json
    """
    data = collect(device)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))
