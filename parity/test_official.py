"""Parity against the official Wan2.1 code itself (``--reference official``): skipped unless
``VIDPORT_WAN_OFFICIAL_ROOT`` names a checkout of https://github.com/Wan-Video/Wan2.1 (docs/parity.md says
how to get one). The official modules are imported from it, never copied; on a CPU its flash_attention runs
through vidport's SDPA shim and the report says so.

    git clone https://github.com/Wan-Video/Wan2.1 ~/src/Wan2.1
    VIDPORT_WAN_OFFICIAL_ROOT=~/src/Wan2.1 python -m pytest -q parity/test_official.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from vidport.parity.harness import run_parity

FAMILY = "wan2.1-t2v"  # the parity fixtures' family (tiny_repo)
ROOT_ENV = "VIDPORT_WAN_OFFICIAL_ROOT"


@pytest.fixture(scope="module")
def official_root() -> Path:
    root = os.environ.get(ROOT_ENV)
    if not root:
        pytest.skip(f"{ROOT_ENV} is not set: point it at a checkout of https://github.com/Wan-Video/Wan2.1 "
                    "(git clone) to compare with the official code")
    path = Path(root).expanduser()
    if not (path / "wan" / "modules" / "model.py").is_file():
        pytest.skip(f"{ROOT_ENV}={root}: no wan/modules/model.py (not a Wan2.1 checkout)")
    return path


def run(setup):
    return run_parity(setup.reference, setup.run_reference, setup.native, setup.run_native,
                      name_map=setup.name_map, reference_name=setup.reference_name, native_name=setup.native_name)


def test_dit_matches_the_official_wanmodel(official_root, tiny_repo, device):
    from vidport.parity.repos import tiny_release
    from vidport.runtime.models.wan.parity import transformer_setup

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    report = run(transformer_setup(tiny_repo, official=tiny_release("wan2.1-t2v"), reference="official",
                                   official_root=official_root, dtype=dtype, device=device))
    assert report.passed, report.table()
    rows = {r.pair.native: r for r in report.rows}
    assert rows["blocks.0.attn.qkv"].pair.ref == ("blocks.0.self_attn.q", "blocks.0.self_attn.k",
                                                   "blocks.0.self_attn.v")
    assert rows["head.proj"].status == rows["<output>"].status == "pass"
    if device == "cpu":  # flash-attn cannot run here: the substitution is in the report
        assert "substituted: wan.modules.attention.flash_attention -> vidport's SDPA shim" in report.reference


def test_pipeline_matches_the_official_sampling_loop(official_root, tiny_repo, device):
    """VideoGenerator (official grid, noise, precision) vs the official WanModel and FlowUniPCMultistepScheduler
    in wan/text2video.py's loop: latents after 3 steps, the DiT at every call."""
    from vidport.parity.repos import tiny_release
    from vidport.runtime.models.wan.parity import pipeline_setup

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    report = run(pipeline_setup(tiny_repo, reference="official", official_root=official_root,
                                official=tiny_release("wan2.1-t2v"), dtype=dtype, device=device, steps=3))
    assert report.passed, report.table()
    out = next(r for r in report.rows if r.pair.native == "<output>")
    assert out.status == "pass" and out.comparisons[0].rel_l2 < (1e-5 if device == "cpu" else 3e-2)


def test_official_scheduler_is_diffusers_unipc_on_the_official_grid(official_root):
    """The runtime's sampler (diffusers' UniPC fed ``family.official_sampling_grid``) steps exactly as the
    official FlowUniPCMultistepScheduler, and the test suite's restated scheduler does too."""
    from diffusers import UniPCMultistepScheduler
    from vidport.parity.official import load_module
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.pipeline import OfficialTimesteps
    from vidport.runtime.pipeline import PipelineState
    from vidport.runtime.pipeline.validate import validate_request

    from tests.test_official_fidelity import OfficialUniPC

    official = load_module(official_root, "wan.utils.fm_solvers_unipc").FlowUniPCMultistepScheduler
    for steps, shift in ((3, 5.0), (50, 5.0), (20, 3.0), (7, 1.0)):
        theirs = official(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        theirs.set_timesteps(steps, device="cpu", shift=shift)
        ours = UniPCMultistepScheduler(**family.scheduler_config(flow_shift=shift))
        request = validate_request("p", "", num_frames=5, height=16, width=16, num_inference_steps=steps,
                                   guidance_scale=1.0, seed=0)
        OfficialTimesteps(ours)(PipelineState(request=request, device=torch.device("cpu")))
        restated = OfficialUniPC()
        restated.set_timesteps(steps, shift=shift)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        g = torch.Generator().manual_seed(steps)
        x = y = z = torch.randn(1, 4, 2, 3, generator=g)
        for t in theirs.timesteps:
            out = torch.randn(1, 4, 2, 3, generator=g)
            x = theirs.step(out, t, x, return_dict=False)[0]
            y = ours.step(out, t, y, return_dict=False)[0]
            z = restated.step(out, t, z)[0]
            assert torch.equal(x, y), (steps, shift, int(t))
            torch.testing.assert_close(z, x, rtol=0, atol=2e-5)


def test_corrupted_map_names_the_first_divergent_official_module(official_root, tmp_path):
    """q/k norm scales swapped by the conversion map: the repo loads strictly (same shapes); against the
    official WanModel holding the release's own tensors, the official ``self_attn.norm_q`` is named."""
    from click.testing import CliRunner
    from vidport.parity.repos import tiny_release
    from vidport.porting.cli import cli
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.parity import transformer_setup

    text = family.OFFICIAL_TO_DIFFUSERS["transformer"].read_text()
    rule = "rename   ^blocks\\.(\\d+)\\.self_attn\\.(norm_q|norm_k)\\.weight$"
    swapped = ("rename   ^blocks\\.(\\d+)\\.self_attn\\.norm_q\\.weight$  ->  blocks.\\1.attn1.norm_k.weight\n"
               "rename   ^blocks\\.(\\d+)\\.self_attn\\.norm_k\\.weight$  ->  blocks.\\1.attn1.norm_q.weight\n")
    bad_map = tmp_path / "swapped.map"
    bad_map.write_text(text.replace(rule, swapped + rule, 1))
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["convert", str(tiny_release("wan2.1-t2v")), "--family", "wan2.1-t2v",
                                      "--out", str(repo), "--map", f"transformer={bad_map}", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = run(transformer_setup(repo, official=tiny_release("wan2.1-t2v"), reference="official",
                                   official_root=official_root))
    first = report.first_failure
    assert first is not None, report.table()
    assert (first.pair.native, first.pair.ref) == ("blocks.0.attn.norm_q", ("blocks.0.self_attn.norm_q",)), \
        report.table()
    assert first.input_cmp is not None and first.input_cmp.passed  # the bug is inside the module: its weights


def test_official_reference_needs_a_checkout(tiny_repo, tmp_path):
    """Bad input is one line before any model is built (runs without a checkout too)."""
    from vidport.runtime.models.wan.parity import transformer_setup

    from vidport.errors import UserError

    with pytest.raises(UserError, match="--reference official needs --official-root"):
        transformer_setup(tiny_repo, reference="official")
    with pytest.raises(UserError, match="not a checkout of the official code"):
        transformer_setup(tiny_repo, reference="official", official_root=tmp_path)
