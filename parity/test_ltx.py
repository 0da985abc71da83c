"""The parity suite for LTX-Video: every component as the runtime uses it vs its external reference, the harness's
self-tests on a corrupted LTX map, and the SSIM references of the tiny release (ssim_refs/ltx-video/).

Tiny on CPU by default (the embedded ``official_weights/ltx-video-tiny`` converted by `port convert`);
``--device cuda --weights PATH [--official RELEASE]`` runs the component comparisons at real size on an LTX-Video
repo (skipped with the reason otherwise). Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from vidport.parity import ssim
from vidport.parity.harness import run_parity
from vidport.parity.repos import tiny_release
from vidport.porting.namemap import NameMap
from vidport.porting.sources import open_source
from vidport.runtime.loading import load_into, read_diffusers_config
from vidport.runtime.models.ltx_video.config import LTXDiTConfig
from vidport.runtime.models.ltx_video.model import LTXDiT
from vidport.runtime.models.ltx_video.parity import (
    GRID,
    VALID_TEXT,
    diffusers_to_native,
    rope_interpolation_scale,
    transformer_inputs,
    transformer_setup,
)
from vidport.runtime.models.ltx_video.pipeline import FRAME_RATE

from vidport.dtypes import torch_dtype
from vidport.families import get_family

FAMILY = get_family("ltx-video")
SETUPS = FAMILY.load(FAMILY.parity_setups)
TINY_RELEASE = tiny_release(FAMILY)


def run(setup, dtype="fp32", device="cpu", *, must_pass=True, name_map=None):
    report = run_parity(setup.reference, setup.run_reference, setup.native, setup.run_native,
                        name_map=name_map or setup.name_map, dtype=dtype, reference_name=setup.reference_name,
                        native_name=setup.native_name, store_device="cpu" if device != "cpu" else None)
    if must_pass:
        assert report.passed, report.table()
        compared = [r for r in report.rows if r.status == "pass"]
        assert len(compared) >= 10, report.table()  # the harness really compared layers, not just outputs
    return report


def worst_rel_l2(report) -> float:
    return max(r.worst.rel_l2 for r in report.rows if r.worst)


# --- the components ---------------------------------------------------------------------------------------------
def test_transformer_fp32(tiny_repo):
    # reference: the official tiny single file converted by diffusers' convert_ltx_transformer_checkpoint_to_diffusers
    # (covers port convert, the runtime loader and the native math at once)
    report = run(SETUPS["transformer"](tiny_repo, official=TINY_RELEASE))
    statuses = {r.pair.native: r.status for r in report.rows}
    for name in ("proj_in", "time_embed", "time_proj", "text_embed", "blocks.0.attn.qkv", "blocks.0.attn.norm_q",
                 "blocks.1.cross_attn.kv", "blocks.1.cross_attn.norm_k", "blocks.1.ffn", "head.proj", "<output>"):
        assert statuses[name] == "pass", (name, report.table())
    assert worst_rel_l2(report) < 1e-6  # measured 0 (bit-exact); the table allows 1e-4


def test_transformer_bf16(tiny_repo):
    run(SETUPS["transformer"](tiny_repo, dtype=torch.bfloat16), dtype="bf16")


def test_transformer_inputs_exercise_the_text_mask(tiny_repo):
    """Two samples with different timesteps and text lengths: a native model that ignores the text mask is caught
    at the first cross-attention's output projection, between modules (the attention kernel is no module of the
    reference)."""
    s = SETUPS["transformer"](tiny_repo)
    cfg = s.native.cfg
    x, text, t, mask = transformer_inputs(cfg.in_channels, cfg.caption_channels, "cpu", torch.float32)
    assert x.shape[0] == 2 and t[0] != t[1] and mask.sum(-1).tolist() == list(VALID_TEXT)
    f, h, w = GRID
    assert len({f, h, w}) == 3 and x.shape[1] == f * h * w
    scale = rope_interpolation_scale(read_diffusers_config(tiny_repo / "vae"), FRAME_RATE)
    unmasked = dataclasses.replace(s, run_native=lambda: s.native(x, text, t, None, num_frames=f, height=h, width=w,
                                                                  rope_interpolation_scale=scale))
    report = run(unmasked, must_pass=False)
    first = report.first_failure
    assert first is not None and first.pair.native == "blocks.0.cross_attn.proj", report.table()
    assert not first.input_cmp.passed, report.table()  # the attention read the padding: the proj's input differs


def test_vae(tiny_repo):
    # the runtime's VAE (strict load, fp32) vs the official single file's vae.* converted by diffusers' own
    # convert_ltx_vae_checkpoint_to_diffusers; encode, then the timestep-conditioned decode with injected noise
    report = run(SETUPS["vae"](tiny_repo, official=TINY_RELEASE))
    assert report.row("encoder").status == "pass" and report.row("decoder").status == "pass"
    assert report.row("decoder.mid_block.time_embedder").status == "pass"  # the timestep conditioning ran
    assert worst_rel_l2(report) < 1e-5  # measured 5e-7: fp32 rounding of weights read unaligned from the mmap


def test_text_encoder(tiny_repo):
    # the converted text_encoder/ through the runtime's EncodePrompt vs the release's own T5 through LTXPipeline's
    # prompt encoding; the output is the embeddings with the text mask as one more channel
    report = run(SETUPS["text_encoder"](tiny_repo, official=TINY_RELEASE))
    assert report.row("encoder.block.1").status == "pass"
    assert worst_rel_l2(report) == 0.0


@pytest.mark.parametrize("cfg", ["uncond-first", "serial", "batched"])
def test_pipeline_latents(tiny_repo, cfg):
    report = run(SETUPS["pipeline"](tiny_repo, steps=3, cfg=cfg))
    assert report.row("text_encoder").calls == 2  # prompt, negative prompt
    if cfg == "uncond-first":  # LTXPipeline's batch, call for call: every DiT module compared at every step
        assert report.row("transformer").calls == 3 and report.row("transformer.blocks.1.attn.qkv").status == "pass"
    else:  # the runtime's own strategies: T5 and the latents
        assert not any(r.pair.native.startswith("transformer") for r in report.rows)
    out = report.row("<output>")
    assert out.status == "pass" and out.worst.rel_l2 < 1e-5  # the packed latents after 3 steps


def test_port_parity_command(tiny_repo):
    from click.testing import CliRunner
    from vidport.porting.cli import cli

    result = CliRunner().invoke(cli, ["parity", "ltx-video", "--component", "text_encoder", "--weights",
                                      str(tiny_repo), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and data["dtype"] == "fp32" and len(data["modules"]) > 10
    assert "repo's text_encoder/" in data["reference"]  # --weights without --official: the repo's own T5


def test_no_official_reference_is_one_line(tiny_repo, capsys):
    from vidport.porting.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["parity", "ltx-video", "--component", "pipeline", "--weights", str(tiny_repo), "--reference",
              "official", "--official-root", "."])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no official-code reference" in err[0]


# --- self-tests: a corrupted LTX map is named at the right module -----------------------------------------------
def native_from(folder, name_map: NameMap) -> LTXDiT:
    with torch.device("meta"):
        model = LTXDiT(LTXDiTConfig.from_diffusers(read_diffusers_config(folder)))
    load_into(model, open_source(str(folder)), name_map)
    return model.eval()


def corrupted_map(old: str, new: str) -> NameMap:
    text = diffusers_to_native().dumps()
    assert old in text, old
    return NameMap.loads(text.replace(old, new, 1), origin="corrupted")


def assert_first(report, native: str, reference: tuple[str, ...], *, input_diverged: bool):
    first = report.first_failure
    assert first is not None, report.table()
    assert (first.pair.native, first.pair.ref) == (native, reference), report.table()
    assert first.input_cmp is not None and first.input_cmp.passed is (not input_diverged), report.table()
    earlier = [r for r in report.rows if r.status != "not run" and r.order < first.fail_order]
    assert all(r.status == "pass" for r in earlier), report.table()


OUT_PROJ = "rename   ^transformer_blocks\\.(\\d+)\\.attn1\\.to_out\\.0\\.(weight|bias)$  ->  blocks.\\1.attn.proj.\\2"
SWAPPED_OUT_PROJ = "".join(f"rename   ^transformer_blocks\\.{a}\\.attn1\\.to_out\\.0\\.(weight|bias)$  ->  "
                           f"blocks.{b}.attn.proj.\\1\n" for a, b in ((0, 1), (1, 0))) + OUT_PROJ


def test_swapped_block_projections_are_named(tiny_repo):
    """Blocks 0 and 1 trade their self-attention output projections (same shapes: strict loading passes). Aligned
    through the committed map, the first divergence is block 0's projection, its input still matching."""
    bad = corrupted_map(OUT_PROJ, SWAPPED_OUT_PROJ)
    report = run(transformer_setup(tiny_repo, native=native_from(tiny_repo / "transformer", bad)), must_pass=False)
    assert_first(report, "blocks.0.attn.proj", ("transformer_blocks.0.attn1.to_out.0",), input_diverged=False)
    assert "inside this module" in report.first_failure.diagnosis


def test_swapped_block_projections_in_the_map_under_test(tiny_repo):
    """The same map also aligning the modules (as `port parity` would if the committed map were the corrupted
    one): native block 0's projection now pairs with the reference's block 1 projection, and is named with a
    diverged input; the blocks it mixes no longer align as wholes."""
    bad = corrupted_map(OUT_PROJ, SWAPPED_OUT_PROJ)
    report = run(transformer_setup(tiny_repo, native=native_from(tiny_repo / "transformer", bad)), must_pass=False,
                 name_map=bad)
    assert_first(report, "blocks.0.attn.proj", ("transformer_blocks.1.attn1.to_out.0",), input_diverged=True)
    assert not any(r.pair.native in ("blocks.0", "blocks.0.attn") for r in report.rows)


def test_cross_attention_kv_merge_order_in_the_map_is_named(tiny_repo):
    bad = corrupted_map("attn2\\.to_(?P<part>k|v)\\.(weight|bias)$  ->  blocks.\\1.cross_attn.kv.\\3  parts=k,v",
                        "attn2\\.to_(?P<part>k|v)\\.(weight|bias)$  ->  blocks.\\1.cross_attn.kv.\\3  parts=v,k")
    report = run(transformer_setup(tiny_repo, native=native_from(tiny_repo / "transformer", bad)), must_pass=False,
                 name_map=bad)
    # the fused kv matches its (mis-ordered) concatenation; the first module that reads k is where it goes wrong
    assert report.row("blocks.0.cross_attn.kv").status == "pass"
    assert_first(report, "blocks.0.cross_attn.norm_k", ("transformer_blocks.0.attn2.norm_k",), input_diverged=True)


def test_corrupted_conversion_map_is_named(tmp_path):
    """The official->Diffusers map swaps the cross-attention q/k norm scales: `port convert --map` writes a repo that
    loads strictly, and against the official file converted by diffusers' own converter the module is named."""
    from click.testing import CliRunner
    from vidport.porting.cli import cli

    text = FAMILY.official_to_diffusers["transformer"].read_text()
    rule = "rename   ^model\\.diffusion_model\\.transformer_blocks\\.(\\d+)\\.(attn1|attn2)\\.q_norm\\.weight$"
    assert rule in text
    swapped = ("rename   ^model\\.diffusion_model\\.transformer_blocks\\.(\\d+)\\.attn2\\.q_norm\\.weight$  ->  "
               "transformer_blocks.\\1.attn2.norm_k.weight\n"
               "rename   ^model\\.diffusion_model\\.transformer_blocks\\.(\\d+)\\.attn2\\.k_norm\\.weight$  ->  "
               "transformer_blocks.\\1.attn2.norm_q.weight\n")
    bad_map = tmp_path / "swapped.map"
    bad_map.write_text(text.replace(rule, swapped + rule, 1))
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["convert", str(TINY_RELEASE), "--family", FAMILY.name, "--out", str(repo),
                                      "--map", f"transformer={bad_map}", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = run(transformer_setup(repo, official=TINY_RELEASE), must_pass=False)
    assert_first(report, "blocks.0.cross_attn.norm_q", ("transformer_blocks.0.attn2.norm_q",), input_diverged=False)


# --- SSIM references (ssim_refs/ltx-video/) -------------------------------------------------------------------
BACKEND = "sdpa-math"  # the CPU default; the committed tiny CPU references
META_KEYS = {"prompt", "negative_prompt", "seed", "frames", "size", "steps", "guidance", "weights",
             "reference_implementation", "torch_version", "device_name"}


def committed():
    return ssim.list_references(FAMILY.name, "cpu", BACKEND)


def test_committed_references_layout_and_metadata():
    refs = committed()
    assert len(refs) == len(FAMILY.ssim.prompts)
    for mp4 in refs:
        meta = json.loads(mp4.with_suffix(".json").read_text())
        assert META_KEYS <= set(meta), META_KEYS - set(meta)
        assert mp4 == ssim.reference_path(FAMILY.name, "cpu", meta["attention_backend"], meta["prompt"], meta["seed"])
        impl = meta["reference_implementation"]
        assert impl["name"] == "diffusers.LTXPipeline"
        # LTXPipeline sampled as the runtime does: its decode settings, the decoder's noise from the seeded RNG
        assert impl["call_settings"] == {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
        assert (meta["frames"], meta["size"], meta["steps"], meta["dtype"]) == (9, [64, 96], 3, "fp32")
        assert len(meta["weights"]["weights_sha256"]) == 64
        # 9 frames of 64x96 noise (the tiny VAE's random weights): lossless, about the raw frames' 166 KB
        assert mp4.stat().st_size < 200_000
        np.testing.assert_array_equal(ssim.read_video(mp4), np.load(mp4.with_suffix(".npz"))["frames"])


def test_tiny_cpu_references_pass(tiny_repo):
    results = ssim.check_references(FAMILY.name, tiny_repo, device="cpu", backend=BACKEND)
    assert len(results) == len(committed())
    for r in results:
        assert r.passed and r.mean >= 0.999, r.summary()  # measured mean 1.0000 (a few pixels off by 1/255)


def test_perturbed_run_fails(tiny_repo, tmp_path):
    root = tmp_path / "refs"
    dest = root / FAMILY.name / "cpu" / BACKEND
    dest.mkdir(parents=True)
    ref = committed()[0]
    for suffix in (".mp4", ".json"):
        shutil.copy(ref.with_suffix(suffix), dest / ref.with_suffix(suffix).name)
    (r,) = ssim.check_references(FAMILY.name, tiny_repo, device="cpu", root=root, failure_dir=tmp_path / "fail",
                                 seed_offset=1)
    assert not r.passed and r.mean < 0.5 and len(r.per_frame) == 9, r.summary()


def test_port_ssim_refs_check_command(tiny_repo):
    from click.testing import CliRunner
    from vidport.porting.cli import cli

    result = CliRunner().invoke(cli, ["ssim-refs", "check", FAMILY.name, "--weights", str(tiny_repo), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data) == len(FAMILY.ssim.prompts) and all(r["passed"] for r in data)


# --- real size (GPU, weights given) -------------------------------------------------------------------------------
@pytest.mark.parametrize("component,dtype", [("transformer", "bf16"), ("text_encoder", "bf16"), ("vae", "fp32"),
                                             ("pipeline", "bf16")])
def test_real_size(real_repo, request, device, component, dtype):
    kwargs = {"device": device}
    official = request.config.getoption("--official")
    if component == "vae":
        if not official:
            pytest.skip("real-size VAE parity needs --official RELEASE (the official LTX-Video single file)")
        kwargs["official"] = official
    else:
        if component in ("transformer", "text_encoder") and official:
            kwargs["official"] = official
        kwargs["dtype"] = torch_dtype(dtype)
    if component == "pipeline":
        kwargs.update(steps=2, frames=9, height=128, width=128)
    run(SETUPS[component](real_repo, **kwargs), dtype=dtype, device=device)
