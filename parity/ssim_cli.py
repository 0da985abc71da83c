"""`port ssim-refs`: render SSIM reference videos with the reference implementation, check vidport."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
from vidport.porting.errors import UserError


def _options(f):
    f = click.option("--weights", type=click.Path(path_type=Path), default=None,
                     help="Diffusers-format repo (default: the embedded tiny release, converted).")(f)
    f = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")(f)
    f = click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None,
                     help="Default: fp32 on CPU, bf16 on CUDA.")(f)
    f = click.option("--attention-backend", "backend", default=None,
                     help="vidport backend name (default: sdpa-math on CPU, sdpa on CUDA); diffusers "
                          "uses the same kernel.")(f)
    f = click.option("--refs", type=click.Path(path_type=Path), default=None,
                     help="Reference root (default: ssim_refs/ of this checkout).")(f)
    return f


def _repo(weights: Path | None, tmp: str) -> Path:
    from vidport.parity.repos import converted_tiny_repo

    if weights is not None:
        if not (weights / "model_index.json").is_file():
            raise UserError(f"{weights}: not a Diffusers-format repo folder (no model_index.json)")
        return weights
    repo, how = converted_tiny_repo(Path(tmp) / "wan2.1-t2v-tiny")
    click.echo(f"tiny repo: {how}", err=True)
    return repo


def _label(weights: Path | None) -> str:
    if weights is None:
        return "port convert official_weights/wan2.1-t2v-tiny (the embedded tiny release)"
    return str(weights)


def _check_family(family: str) -> None:
    from vidport.runtime.families import get_family

    get_family(family)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")


@click.group("ssim-refs")
def ssim_refs():
    """SSIM reference videos: ssim_refs/<family>/<device-class>/<attention-backend>/<prompt>-seed<k>.mp4."""


@ssim_refs.command("generate")
@click.argument("family")
@_options
@click.option("--prompt", "prompts", multiple=True, help="Prompt to render (repeatable; default: the family's).")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seed per --prompt (default 0).")
@click.option("--frames", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--width", type=int, default=None)
@click.option("--steps", type=int, default=None)
def generate(family, weights, device, dtype, backend, refs, prompts, seeds, frames, height, width, steps):
    """Render FAMILY's reference videos with the reference implementation (diffusers WanPipeline)."""
    from vidport.parity.ssim import REFS, generate_references

    _check_family(family)
    _check_device(device)
    if seeds and len(seeds) != len(prompts):
        raise UserError("give one --seed per --prompt (or none)")
    pairs = [(p, seeds[i] if seeds else 0) for i, p in enumerate(prompts)] or None
    with tempfile.TemporaryDirectory(prefix="vidport-ssim-") as tmp:
        generate_references(family, _repo(weights, tmp), device=device, dtype=dtype, backend=backend, prompts=pairs,
                            root=refs or REFS, log=click.echo, weights_label=_label(weights),
                            num_frames=frames, height=height, width=width, num_inference_steps=steps)


@ssim_refs.command("check")
@click.argument("family")
@_options
@click.option("--failures", type=click.Path(path_type=Path), default=Path("ssim_failures"), show_default=True,
              help="Where side-by-side PNGs of failing videos' worst frames go.")
@click.option("--json", "as_json", is_flag=True)
def check(family, weights, device, dtype, backend, refs, failures, as_json):
    """Render FAMILY's references with vidport and compare per-frame SSIM; exit 1 on any failure."""
    from vidport.parity.ssim import REFS, check_references

    _check_family(family)
    _check_device(device)
    with tempfile.TemporaryDirectory(prefix="vidport-ssim-") as tmp:
        results = check_references(family, _repo(weights, tmp), device=device, dtype=dtype, backend=backend,
                                   root=refs or REFS, failure_dir=failures)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(r.summary())
    sys.exit(0 if all(r.passed for r in results) else 1)
