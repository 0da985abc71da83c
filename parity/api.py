"""The parity half of vidport's Python API (``vidport.parity``): what ``port parity`` runs."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path

from vidport.errors import UserError

COMPONENTS = ("transformer", "vae", "text_encoder", "pipeline")


def _device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` resolved (CUDA when available; bf16 on CUDA, fp32 on CPU), or a one-line error."""
    import torch
    from vidport.parity.tolerances import TOLERANCES

    from vidport.devices import default_device

    if device == "auto":
        device = default_device().type
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    if dtype not in TOLERANCES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(TOLERANCES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device, dtype


def parity(family: str, *, component: str = "transformer", weights: str | Path | None = None,
           official: str | Path | None = None, reference: str = "diffusers", official_root: str | Path | None = None,
           dtype: str = "fp32", device: str = "cpu", seed: int = 0, steps: int | None = None,
           save_failing: str | Path | None = None, log: Callable[[str], None] | None = None):
    """Compare FAMILY's native COMPONENT with its reference implementation module by module.

    Returns the ``ParityReport`` (``.passed``, ``.table()``, ``.to_json()``; the first failing module is
    the answer). ``weights``: a Diffusers-format repo; default the embedded tiny release, converted into
    a temporary folder. ``reference``: "diffusers" (diffusers/transformers) or "official" (the family's
    official code, imported from the checkout at ``official_root``; which components it covers is the
    family's parity setups' answer). Bad input raises ``UserError`` before any model is built."""
    from vidport.parity.harness import run_parity
    from vidport.parity.repos import check_repo, converted_tiny_repo, tiny_release

    from vidport.dtypes import torch_dtype
    from vidport.families import get_family

    fam = get_family(family)
    setups = fam.load(fam.parity_setups)
    if component not in setups:
        raise UserError(f"{family} has no parity setup for {component!r}; choose one of {', '.join(setups)}")
    device, dtype = _device_and_dtype(device, dtype)
    weights = Path(weights) if weights is not None else None
    if weights is not None:
        check_repo(weights)
    with tempfile.TemporaryDirectory(prefix="vidport-parity-") as tmp:
        repo = weights
        if repo is None:
            repo, how = converted_tiny_repo(Path(tmp) / fam.tiny_release, fam.name)
            if log:
                log(f"tiny repo: {how}")
        kwargs = {"device": device}
        if reference != "diffusers" or official_root is not None:
            kwargs.update(reference=reference, official_root=Path(official_root) if official_root else None)
        takes_official = "official" in inspect.signature(setups[component]).parameters
        if component == "pipeline" and reference != "diffusers" and takes_official:
            # the official DiT loads the release's tensors
            kwargs["official"] = official or (tiny_release(fam) if weights is None else None)
        if component != "pipeline" and takes_official:
            # the reference converts (or loads) the official release itself (diffusers' single-file converters;
            # a family whose text encoder ships in the Diffusers layout loads the release's own folder)
            kwargs["official"] = official or (tiny_release(fam) if weights is None else None)
            if kwargs["official"] is None and component == "vae":
                raise UserError("--component vae with --weights needs --official RELEASE (the official VAE file "
                                "is the reference's source)")
        if component != "vae":
            kwargs["dtype"] = torch_dtype(dtype)
        if component == "pipeline" and steps:
            kwargs["steps"] = steps
        setup = setups[component](repo, **kwargs)
        return run_parity(setup.reference, setup.run_reference, setup.native, setup.run_native,
                          name_map=setup.name_map, dtype=dtype if component != "vae" else "fp32", seed=seed,
                          reference_name=setup.reference_name, native_name=setup.native_name,
                          save_failing=save_failing, store_device="cpu" if device.startswith("cuda") else None)
