"""`port parity`: per-layer activation parity of the native model vs a reference implementation."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from porting.errors import UserError

COMPONENTS = ("transformer", "vae", "text_encoder", "pipeline")


@click.command("parity")
@click.argument("family")
@click.option("--component", type=click.Choice(COMPONENTS), default="transformer", show_default=True)
@click.option("--reference", type=click.Choice(["diffusers"]), default="diffusers", show_default=True,
              help="Reference implementation (diffusers; transformers for the text encoder).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Diffusers-format repo (e.g. from `port convert`). Default: the embedded tiny release, "
                   "converted into a temporary folder.")
@click.option("--official", type=click.Path(path_type=Path), default=None,
              help="Official release folder: the reference DiT/VAE are converted from it by diffusers' own "
                   "converters (default with no --weights: the embedded tiny release).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None, help="Pipeline: denoising steps (default: the preset's).")
@click.option("--save-failing", type=click.Path(path_type=Path), default=None,
              help="Folder for both sides' activations of the first failing module.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
def parity(family, component, reference, weights, official, dtype, device, seed, steps, save_failing, as_json):
    """Compare FAMILY's native COMPONENT with the reference, module by module; name the first divergence.

    Exit status 0 when every aligned module is within the dtype's tolerance, 1 otherwise.
    """
    import torch

    from parity.harness import run_parity
    from parity.repos import TINY_RELEASE, converted_tiny_repo
    from parity.tolerances import DTYPES
    from parity.wan import SETUPS
    from runtime.families import get_family

    fam = get_family(family)
    if fam.NAME != "wan2.1-t2v":
        raise UserError(f"parity has no setups for family {family!r} yet")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if weights is not None and not (weights / "model_index.json").is_file():
        raise UserError(f"{weights}: not a Diffusers-format repo folder (no model_index.json); "
                        "convert an official release with `port convert`")
    torch_dtype = DTYPES[dtype]
    with tempfile.TemporaryDirectory(prefix="vidport-parity-") as tmp:
        repo = weights
        if repo is None:
            repo, how = converted_tiny_repo(Path(tmp) / "wan2.1-t2v-tiny")
            click.echo(f"tiny repo: {how}", err=True)
        kwargs = {"device": device}
        if component in ("transformer", "vae"):
            # the reference converts the official release itself (diffusers' single-file converters)
            kwargs["official"] = official or (TINY_RELEASE if weights is None else None)
            if kwargs["official"] is None and component == "vae":
                raise UserError("--component vae with --weights needs --official RELEASE (the official VAE file "
                                "is the reference's source)")
        if component != "vae":
            kwargs["dtype"] = torch_dtype
        if component == "pipeline" and steps:
            kwargs["steps"] = steps
        setup = SETUPS[component](repo, **kwargs)
        report = run_parity(setup.reference, setup.run_reference, setup.native, setup.run_native,
                            name_map=setup.name_map, dtype=dtype if component != "vae" else "fp32", seed=seed,
                            reference_name=setup.reference_name, native_name=setup.native_name,
                            save_failing=save_failing, store_device="cpu" if device == "cuda" else None)
    click.echo(report.to_json() if as_json else report.table())
    sys.exit(0 if report.passed else 1)
