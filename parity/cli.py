"""`port parity`: per-layer activation parity of the native model vs a reference implementation."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from vidport.parity.api import COMPONENTS
from vidport.porting.options import device_option, dtype_option, json_option


@click.command("parity")
@click.argument("family")
@click.option("--component", default="transformer", show_default=True,
              help=f"What to compare ({', '.join(COMPONENTS)}, as the family's parity setups offer); "
                   "pipeline = the whole sampler's latents after --steps steps.")
@click.option("--reference", type=click.Choice(["diffusers", "official"]), default="diffusers", show_default=True,
              help="Reference implementation: diffusers (transformers for the text encoder), or official: the "
                   "family's official code from --official-root (Wan2.1: WanModel and the official sampler; "
                   "transformer and pipeline).")
@click.option("--official-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A checkout of the official code (git clone of the family's official repository) for "
                   "--reference official; imported, never copied.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Diffusers-format repo (e.g. from `port convert`). Default: the embedded tiny release, "
                   "converted into a temporary folder.")
@click.option("--official", type=click.Path(path_type=Path), default=None,
              help="Official release folder: the reference DiT/VAE are converted from it by diffusers' own "
                   "converters, and a text encoder it ships in the Diffusers layout is the reference's; "
                   "default with no --weights: the embedded tiny release.")
@dtype_option("fp32", "Dtype both sides run in")
@device_option("cpu", "Device both sides run on")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--steps", type=int, default=None, help="Pipeline: denoising steps (default: the preset's).")
@click.option("--save-failing", type=click.Path(path_type=Path), default=None,
              help="Folder for both sides' activations of the first failing module.")
@json_option("the report")
def parity(family, component, reference, official_root, weights, official, dtype, device, seed, steps, save_failing,
           as_json):
    """Compare FAMILY's native COMPONENT with the reference, module by module; name the first divergence.

    Exit status 0 when every aligned module is within the dtype's tolerance, 1 when one is not (the
    report names the first), 2 on bad input (a damaged or missing repo, an unknown family).
    """
    from vidport.parity.api import parity as run

    report = run(family, component=component, weights=weights, official=official, reference=reference,
                 official_root=official_root, dtype=dtype, device=device, seed=seed, steps=steps,
                 save_failing=save_failing, log=lambda m: click.echo(m, err=True))
    click.echo(report.to_json() if as_json else report.table())
    sys.exit(0 if report.passed else 1)
