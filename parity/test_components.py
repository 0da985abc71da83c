"""The parity suite: every Wan2.1 component as the runtime uses it vs its external reference.

Tiny on CPU by default; ``--device cuda --weights PATH [--official RELEASE]`` runs the same comparisons
at real size (skipped with the reason when weights or a GPU are absent).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from vidport.parity.harness import run_parity
from vidport.parity.repos import tiny_release

from vidport.dtypes import torch_dtype
from vidport.families import get_family

FAMILY = get_family("wan2.1-t2v")
SETUPS = FAMILY.load(FAMILY.parity_setups)
TINY_RELEASE = tiny_release(FAMILY)


def run(setup, dtype="fp32", device="cpu"):
    # at real size on a GPU, recorded activations wait in host memory
    report = run_parity(setup.reference, setup.run_reference, setup.native, setup.run_native,
                        name_map=setup.name_map, dtype=dtype, reference_name=setup.reference_name,
                        native_name=setup.native_name, store_device="cpu" if device != "cpu" else None)
    assert report.passed, report.table()
    compared = [r for r in report.rows if r.status == "pass"]
    assert len(compared) >= 10, report.table()  # the harness really compared layers, not just outputs
    return report


def test_transformer_fp32(tiny_repo):
    # reference: the official tiny DiT converted by diffusers' convert_wan_transformer_to_diffusers, so the
    # comparison covers port convert, the runtime loader and the native math at once
    report = run(SETUPS["transformer"](tiny_repo, official=TINY_RELEASE))
    worst = max(r.worst.rel_l2 for r in report.rows if r.worst)
    assert worst < 1e-5  # measured ~5e-6 (time embedding); the table allows 1e-4


def test_transformer_bf16(tiny_repo):
    # bf16 weights and activations on both sides; norms/modulation/time embedding stay fp32 natively
    run(SETUPS["transformer"](tiny_repo, dtype=torch.bfloat16), dtype="bf16")


def test_vae(tiny_repo):
    report = run(SETUPS["vae"](tiny_repo, official=TINY_RELEASE))
    assert report.row("decoder").calls >= 2 and report.row("encoder").status == "pass"


def test_text_encoder(tiny_repo):
    report = run(SETUPS["text_encoder"](tiny_repo))
    assert report.row("encoder.block.1").status == "pass"


@pytest.mark.skipif(importlib.util.find_spec("vidport.runtime.generator") is None,
                    reason="vidport.runtime.generator not present")
@pytest.mark.parametrize("cfg", ["serial", "batched"])
def test_pipeline_latents(tiny_repo, cfg):
    report = run(SETUPS["pipeline"](tiny_repo, steps=3, cfg=cfg, height=16, width=32))
    calls = report.row("transformer").calls
    assert calls == (6 if cfg == "serial" else 3)  # 3 steps, guidance on: cond + uncond
    assert report.row("<output>").status == "pass"  # the latents after 3 steps


# --- real size (GPU, weights given) -----------------------------------------------------------------
def _fits_twice_in_fp32(repo, component: str, device: str) -> bool:
    """Reference and native copies of the component in fp32, with 25% headroom, fit in GPU memory."""
    from vidport.porting.sources import open_source

    src = open_source(str(repo / component))
    numel = sum(info.numel for info in src.infos.values())
    return 2 * 4 * numel * 1.25 < torch.cuda.get_device_properties(torch.device(device)).total_memory


@pytest.mark.parametrize("component,dtype", [("transformer", "fp32"), ("transformer", "bf16"),
                                             ("text_encoder", "bf16"), ("vae", "fp32"), ("pipeline", "bf16")])
def test_real_size(real_repo, request, device, component, dtype):
    if component == "transformer" and dtype == "fp32" and not _fits_twice_in_fp32(real_repo, component, device):
        pytest.skip("two fp32 copies of this DiT do not fit in GPU memory (14B); the bf16 comparison runs")
    kwargs = {"device": device}
    official = request.config.getoption("--official")
    if component == "vae":
        if not official:
            pytest.skip("real-size VAE parity needs --official RELEASE (the official Wan2.1_VAE.pth)")
        kwargs["official"] = official
    else:
        if component == "transformer" and official:
            kwargs["official"] = official
        kwargs["dtype"] = torch_dtype(dtype)
    if component == "pipeline":
        kwargs.update(steps=2, frames=5, height=128, width=128)
    run(SETUPS[component](real_repo, **kwargs), dtype=dtype, device=device)
