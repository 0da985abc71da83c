"""`port ssim-refs`: render SSIM reference videos with the reference implementation, check vidport."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
from vidport.porting.options import BackendType, deprecated_alias, device_option, dtype_option, json_option, prefer

from vidport.errors import UserError


def _options(f):
    f = click.option("--weights", type=click.Path(path_type=Path), default=None,
                     help="Diffusers-format repo (default: the embedded tiny release, converted).")(f)
    f = device_option("cpu", "Device of the renders")(f)
    f = dtype_option("auto", "Compute dtype of the renders")(f)
    f = click.option("--attention-backend", "backend", type=BackendType(), default=None,
                     help="Attention backend of both renders [default: sdpa-math on CPU, sdpa on CUDA]; "
                          "diffusers uses the same kernel. `port info` lists the backends.")(f)
    f = click.option("--refs", type=click.Path(path_type=Path), default=None,
                     help="Reference root (default: ssim_refs/ of this checkout).")(f)
    f = click.option("--reference", type=click.Choice(["diffusers", "official"]), default="diffusers",
                     show_default=True,
                     help="Reference implementation: the diffusers pipeline, or the family's official code "
                          "(rendered from --official-root; checked against vidport's official mode).")(f)
    return f


def _repo(family: str, weights: Path | None, tmp: str) -> Path:
    from vidport.parity.repos import check_repo, converted_tiny_repo

    if weights is not None:
        check_repo(weights)
        return weights
    repo, how = converted_tiny_repo(Path(tmp) / _check_family(family).tiny_release, family)
    click.echo(f"tiny repo: {how}", err=True)
    return repo


def _label(family: str, weights: Path | None) -> str:
    if weights is None:
        return f"port convert official_weights/{_check_family(family).tiny_release} (the embedded tiny release)"
    return str(weights)


def _check_family(family: str):
    from vidport.families import get_family

    return get_family(family)


def _check_device(device: str) -> str:
    """The device to render on (``auto`` resolved), or a one-line error when it is absent."""
    import torch

    from vidport.devices import default_device

    if device == "auto":
        return default_device().type
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


@click.group("ssim-refs")
def ssim_refs():
    """SSIM reference videos: ssim_refs/<family>/<device-class>/<attention-backend>/<prompt>-seed<k>.mp4."""


@ssim_refs.command("generate")
@click.argument("family")
@_options
@click.option("--prompt", "prompts", multiple=True, help="Prompt to render (repeatable; default: the family's).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seed per --prompt (default 0).")
@click.option("--num-frames", type=int, default=None, help="Frames per video [default: the preset's].")
@deprecated_alias("--frames", "frames_deprecated", type=int)
@click.option("--height", type=int, default=None, help="Height in pixels [default: the preset's].")
@click.option("--width", type=int, default=None, help="Width in pixels [default: the preset's].")
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the preset's].")
@click.option("--official-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A checkout of the family's official code, for --reference official (imported, never copied).")
@json_option("the written references")
def generate(family, weights, device, dtype, backend, refs, reference, prompts, seeds, num_frames, frames_deprecated,
             height, width, steps, official_root, as_json):
    """Render FAMILY's reference videos with the reference implementation (the diffusers pipeline the
    repo's model_index.json names, e.g. WanPipeline for wan2.1-t2v; or, with --reference official, the
    family's official code; the metadata records which)."""
    from vidport.parity.ssim import REFS, generate_references

    frames = prefer(num_frames, frames_deprecated, new="--num-frames", old="--frames")
    dtype = None if dtype == "auto" else dtype
    _check_family(family)
    device = _check_device(device)
    if seeds and len(seeds) != len(prompts):
        raise UserError("give one --seed per --prompt (or none)")
    pairs = [(p, seeds[i] if seeds else 0) for i, p in enumerate(prompts)] or None
    with tempfile.TemporaryDirectory(prefix="vidport-ssim-") as tmp:
        written = generate_references(family, _repo(family, weights, tmp), device=device, dtype=dtype,
                                      backend=backend, prompts=pairs, root=refs or REFS,
                                      log=(lambda m: None) if as_json else click.echo,
                                      weights_label=_label(family, weights), reference=reference,
                                      official_root=official_root, num_frames=frames, height=height,
                                      width=width, num_inference_steps=steps)
    if as_json:
        click.echo(json.dumps({"written": [str(p) for p in written]}, indent=2))


@ssim_refs.command("check")
@click.argument("family")
@_options
@click.option("--failures", type=click.Path(path_type=Path), default=Path("ssim_failures"), show_default=True,
              help="Where side-by-side PNGs of failing videos' worst frames go.")
@json_option("one result per reference")
def check(family, weights, device, dtype, backend, refs, reference, failures, as_json):
    """Render FAMILY's references with vidport and compare per-frame SSIM; exit 1 on any failure."""
    from vidport.parity.ssim import REFS, check_references

    dtype = None if dtype == "auto" else dtype
    _check_family(family)
    device = _check_device(device)
    with tempfile.TemporaryDirectory(prefix="vidport-ssim-") as tmp:
        results = check_references(family, _repo(family, weights, tmp), device=device, dtype=dtype, backend=backend,
                                   root=refs or REFS, failure_dir=failures, reference=reference)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(r.summary())
    sys.exit(0 if all(r.passed for r in results) else 1)
