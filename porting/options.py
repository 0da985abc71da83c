"""The `port` commands' one option vocabulary (docs/cli.md): the same name, values and help for the same
idea in every command, and deprecation aliases for the names that changed. Importing this is cheap (no
torch): bad values fail before any library loads."""

from __future__ import annotations

import re
from collections.abc import Callable

import click

# compute dtypes of the runtime, parity and SSIM commands; `port convert --dtype` is a storage dtype
COMPUTE_DTYPES = ("auto", "fp32", "bf16")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceType(click.ParamType):
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    name = "device"

    def get_metavar(self, param, ctx=None) -> str:
        return "auto|cpu|cuda|cuda:N"

    def convert(self, value, param, ctx):
        if not DEVICE_RE.match(str(value)):
            self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N", param, ctx)
        return str(value)


class BackendType(click.ParamType):
    """``auto`` or a ``vidport.runtime.attention`` backend name. Checked against the backend table only when
    given (the table lives with torch); `port info` lists the names and which run here."""

    name = "backend"

    def get_metavar(self, param, ctx=None) -> str:
        return "auto|NAME"

    def convert(self, value, param, ctx):
        if value == "auto":
            return value
        from vidport.runtime.attention import BACKENDS

        if value not in BACKENDS:
            self.fail(f"{value!r} is not an attention backend; choose auto or one of: {', '.join(BACKENDS)}",
                      param, ctx)
        return value


def device_option(default: str, what: str = "Device") -> Callable:
    return click.option("--device", type=DeviceType(), default=default, show_default=True,
                        help=f"{what}: auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")


def dtype_option(default: str, what: str = "Compute dtype of the DiT and text encoder") -> Callable:
    return click.option("--dtype", type=click.Choice(COMPUTE_DTYPES), default=default, show_default=True,
                        help=f"{what}: auto = bf16 on CUDA, fp32 on CPU (the VAE always decodes in fp32).")


def backend_option(default: str = "auto", param: str = "attention_backend") -> Callable:
    return click.option("--attention-backend", param, type=BackendType(), default=default, show_default=True,
                        help="Attention kernel: auto picks the fastest that runs here per attention kind; "
                             "`port info` lists the backends.")


# fidelity to the official release (docs/generate.md "Fidelity"): the same names in generate and ssim-refs
SAMPLER_GRIDS = ("official", "diffusers")
NOISE_MODES = ("diffusers", "official")
PRECISIONS = ("fast", "official")


def sampler_grid_option() -> Callable:
    return click.option("--sampler-grid", type=click.Choice(SAMPLER_GRIDS), default=None,
                        help="Whose sigma grid the sampler steps on: official (the official release's sampler, "
                             "computed by vidport, so the video does not depend on the installed diffusers) or "
                             "diffusers (the installed diffusers scheduler's own; what diffusers' pipeline "
                             "samples) [default: official for unipc, diffusers for euler, which the official "
                             "code lacks].")


def noise_option() -> Callable:
    return click.option("--noise", type=click.Choice(NOISE_MODES), default="diffusers", show_default=True,
                        help="How a seed becomes the initial noise: diffusers (a CPU generator: the same noise "
                             "on every device, as diffusers' pipeline with a CPU generator) or official (a "
                             "generator on the run's device, as the official sampler: its video frame for "
                             "frame on the same GPU). On a CPU both are the same.")


def precision_option() -> Callable:
    return click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                        help="bf16 recipe of the DiT: fast (the residual stream in bf16, as diffusers) or "
                             "official (residual stream, norms, modulation and head in fp32 around bf16 GEMMs "
                             "and attention, as the official autocast run) [default: official: 0.9% slower, "
                             "5x closer to fp32; BENCHMARKS.md]. No effect in fp32.")


def vae_tiling_option() -> Callable:
    return click.option("--vae-tiling/--no-vae-tiling", "vae_tiling", default=None,
                        help="Decode the video in overlapping 256-pixel tiles blended across their 64-pixel overlaps "
                             "(bounded VAE memory; with --num-gpus N the GPUs share the tiles). Close to the plain "
                             "decode but not bit-equal to it [default: on for frames larger than 480x832, e.g. 720p, "
                             "whatever --num-gpus; off for a family whose decoder cannot be tiled]. Untiled, N GPUs "
                             "split the plain decode by rows (the same arithmetic up to TF32 rounding, "
                             "docs/attention-and-parallel.md).")


def json_option(what: str = "the result") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout (for machines).")


def progress_option() -> Callable:
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bar on stderr [default: on, off with `port --quiet`].")


def show_progress(flag: bool | None) -> bool:
    """--progress/--no-progress, else on unless `port --quiet`."""
    return (verbosity() >= 0) if flag is None else flag


def verbosity() -> int:
    """-1 with `port --quiet`, 0 by default, 1+ with `port -v`."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return int((root.obj or {}).get("verbosity", 0)) if root else 0


def deprecated_alias(old: str, param: str, **kwargs) -> Callable:
    """A hidden option ``old`` that still works for a renamed one; its value arrives as ``param`` and
    ``prefer`` merges it with the new option's."""
    return click.option(old, param, hidden=True, default=None, **kwargs)


def prefer(new_value, old_value, *, new: str, old: str, required: bool = False):
    """The new option's value, else the deprecated alias's (saying once that it is deprecated)."""
    if old_value is not None and new_value is not None:
        raise click.UsageError(f"{old} is the old name of {new}; give only {new}")
    if old_value is not None:
        click.echo(f"warning: {old} is deprecated; use {new}", err=True)
        return old_value
    if new_value is None and required:
        raise click.UsageError(f"Missing option {new!r}.")
    return new_value
