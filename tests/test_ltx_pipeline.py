"""The LTX-Video pipeline (runtime/models/ltx_video/pipeline.py) vs diffusers' LTXPipeline (the external reference) on
a tiny in-process repo with seeded random weights: the same latents after 3 steps and the same uint8 frames from the
timestep-conditioned VAE (v0.9.1-style, decode noise on); the text mask reaches the DiT; unsupported options are one
line each. The family is not registered yet, so the module's functions are called directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from vidport.runtime.models.ltx_video import family
from vidport.runtime.models.ltx_video import pipeline as ltx
from vidport.runtime.models.ltx_video.config import preset
from vidport.runtime.pipeline import Conditioning, PipelineState, get_cfg_strategy, run_stages, validate_request

from vidport.errors import UserError

SEED = 7
PROMPT = "a cat walks on the grass in the sun"
NEGATIVE = "blurry, low quality"
SIZE = dict(height=64, width=96, num_frames=9)  # latents 2 x 2 x 3: 12 tokens
STEPS, GUIDANCE = 3, 3.0
DECODE = dict(decode_timestep=0.05, decode_noise_scale=0.025)  # the official v0.9.1 settings
VOCAB = 100


def _randomize(module: torch.nn.Module, gen: torch.Generator, skip=()) -> None:
    """Every parameter seeded-random and scaled like a trained one (norm weights near 1), so no path hides behind
    an init value (zero-initialized projections, unit tables)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.5 if p.dim() > 1 else 0.1) / max(1, p[0].numel() if p.dim() > 1 else 1) ** 0.5)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A tiny Diffusers LTXPipeline repo written by ``LTXPipeline.save_pretrained``."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel as DiffusersLTXDiT
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    from vidport.runtime.models.wan.tiny_release import make_tokenizer

    root = tmp_path_factory.mktemp("ltx-tiny")
    make_tokenizer(root / "tok", VOCAB)
    tokenizer = T5TokenizerFast.from_pretrained(root / "tok")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dit = preset("tiny")
    text_encoder = T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=dit.caption_channels, d_kv=6, d_ff=48,
                                           num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                           dropout_rate=0.0, pad_token_id=0, eos_token_id=1))
    _randomize(text_encoder, gen)
    transformer = DiffusersLTXDiT(**{k: v for k, v in dit.to_diffusers().items() if k[0] != "_"})
    _randomize(transformer, gen)
    vae = AutoencoderKLLTXVideo(
        latent_channels=dit.in_channels, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(16, 32, 64),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(True, True, True, False), upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=4, patch_size_t=1, encoder_causal=True,
        decoder_causal=False)
    with torch.no_grad():
        for name, p in vae.named_parameters():  # zero at init: the decoder's injected noise would not count
            if "per_channel_scale" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        vae.latents_mean.copy_(0.3 * torch.randn(dit.in_channels, generator=gen))
        vae.latents_std.copy_(0.5 + torch.rand(dit.in_channels, generator=gen))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                transformer=transformer).save_pretrained(root / "repo")
    return root / "repo"


@pytest.fixture(scope="module")
def reference(repo):
    from diffusers import LTXPipeline
    from vidport.runtime.loading import quiet_library_loading

    with quiet_library_loading():
        pipe = LTXPipeline.from_pretrained(repo)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def components(repo):
    c = ltx.load_components(repo, dtype=torch.float32, device=torch.device("cpu"), precision="official")
    c.transformer.set_attention_backend("sdpa-math")
    return c


def request(prompt=PROMPT, negative=NEGATIVE, guidance=GUIDANCE):
    return validate_request(prompt, negative, **SIZE, num_inference_steps=STEPS, guidance_scale=guidance, seed=SEED,
                            geometry=family.SPEC.geometry)


def run(c, req, stages=None, cfg="serial") -> PipelineState:
    stages = stages or ltx.t2v_stages(c, cfg=get_cfg_strategy(cfg))
    return run_stages(stages, PipelineState(request=req, device=c.device))


def run_reference(pipe, output_type: str, prompt=PROMPT):
    torch.manual_seed(SEED)  # the decoder's injected noise: the global RNG, as the runtime seeds it
    return pipe(prompt=prompt, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type=output_type, **DECODE).frames


@pytest.fixture(scope="module")
def ours(components):
    return run(components, request())


@pytest.mark.parametrize("cfg", ["serial", "batched"])
def test_latents_match_ltx_pipeline(components, reference, ours, cfg):
    want = run_reference(reference, "latent")
    got = ours.latents if cfg == "serial" else run(components, request(), cfg=cfg).latents
    assert got.shape == want.shape == (1, 12, 16)
    err = (got - want).abs().max().item()
    print(f"\nlatents max abs vs LTXPipeline ({cfg} CFG): {err:.3g}")
    assert err <= 1e-4
    assert ours.initial_noise.shape == (1, 16, 2, 2, 3)


def test_frames_match_ltx_pipeline(reference, ours):
    want = (run_reference(reference, "np")[0] * 255).round().astype(np.uint8)  # [F, H, W, 3]
    got = ours.frames
    assert got.dtype == np.uint8 and got.shape == want.shape == (9, 64, 96, 3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    within = (diff <= 1).mean()
    print(f"\nframes vs LTXPipeline: {within:.4%} within 1/255, {(diff == 0).mean():.4%} equal, max {diff.max()}")
    assert within >= 0.99
    assert got.std() > 5  # a real picture, not a flat one


def test_decode_noise_and_decoder_rng_are_the_seeds(components, ours):
    """The decode is reproducible for a seed (the decoder's injected noise too) and leaves the caller's RNG as it
    was; the decode noise matters (it is not skipped)."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = ltx.DecodeVideo(components)(PipelineState(request=request(), device=components.device,
                                                      latents=ours.latents, initial_noise=ours.initial_noise))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.array_equal(again.frames, ours.frames)
    components.decode_noise_scale = 0.0
    try:
        quiet = ltx.DecodeVideo(components)(PipelineState(request=request(), device=components.device,
                                                          latents=ours.latents, initial_noise=ours.initial_noise))
    finally:
        components.decode_noise_scale = family.DECODE_NOISE_SCALE
    assert not np.array_equal(quiet.frames, ours.frames)


class DropMask:
    """A stage after the encode that makes every text token count (what ignoring the mask would do)."""

    name = "drop-mask"

    def __call__(self, state):
        for branch in ("cond", "uncond"):
            kw = dict(getattr(state, branch).kwargs)
            kw["encoder_attention_mask"] = torch.ones_like(kw["encoder_attention_mask"])
            setattr(state, branch, Conditioning(kw))
        return state


def test_text_mask_reaches_the_dit(components, ours):
    cond = ours.cond.kwargs
    assert cond["encoder_hidden_states"].shape == (1, family.TEXT_LEN, 24)
    mask = cond["encoder_attention_mask"]
    assert mask.dtype == torch.bool and 0 < int(mask.sum()) < family.TEXT_LEN  # a short prompt: padded
    stages = ltx.t2v_stages(components, cfg=get_cfg_strategy("serial"))
    stages.insert(1, DropMask())
    unmasked = run(components, request(), stages[:-1])
    diff = (unmasked.latents - ours.latents).abs().max().item()
    assert diff > 1e-3, f"ignoring the text mask changed the latents by only {diff:.3g}"


def test_guidance_one_runs_one_branch(components):
    calls = []

    class Counting:
        name = "count"

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, model, *args):
            calls.append(args[3] is None)  # uncond
            return self.inner(model, *args)

    state = run(components, request(guidance=1.0), ltx.t2v_stages(components, cfg=Counting(get_cfg_strategy("serial"))))
    assert state.uncond is None and calls == [True] * STEPS


def test_timesteps_are_ltx_pipelines(components, reference):
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    state = ltx.ShiftedTimesteps(components.scheduler, components.vae)(
        PipelineState(request=request(), device=components.device))
    sched = reference.scheduler
    cfg = sched.config
    mu = calculate_shift(12, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    assert ltx.calculate_shift(12, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                               cfg.max_shift) == mu
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    assert torch.equal(state.timesteps, sched.timesteps)


def test_pack_is_ltx_pipelines():
    from diffusers import LTXPipeline

    for p, pt in ((1, 1), (2, 2)):
        cfg = preset("tiny").replace(patch_size=p, patch_size_t=pt, in_channels=4 * p * p * pt)
        latents = torch.randn(1, 4, 2 * pt, 3 * p, 5 * p)
        tokens = ltx.pack(latents, cfg)
        assert torch.equal(tokens, LTXPipeline._pack_latents(latents, p, pt))
        assert torch.equal(ltx.unpack(tokens, cfg, (2, 3, 5)), latents)


def test_sampling_defaults(repo):
    tiny = ltx.repo_sampling_defaults(repo)
    assert {k: tiny[k] for k in family.SAMPLING["tiny"]} == family.SAMPLING["tiny"]
    real = ltx.sampling_defaults(preset("2b"))
    # official inference.py at v0.9.1 (the height is the family's SAMPLING's: see the pipeline's docstring)
    official = {"width": 704, "num_frames": 121, "num_inference_steps": 40, "guidance_scale": 3.0}
    assert {k: real[k] for k in official} == official
    assert real["height"] == family.SAMPLING["2b"]["height"]
    assert real["fps"] == 25 and real["negative_prompt"] == ltx.NEGATIVE_PROMPT
    assert (real["decode_timestep"], real["decode_noise_scale"]) == (0.05, 0.025)
    # an unknown shape takes the nearest preset's defaults, never real sizes for small weights
    assert ltx.sampling_defaults(preset("tiny").replace(num_layers=3))["height"] == 64
    g = family.SPEC.geometry
    assert (g.frame_stride, g.spatial_multiple, g.text_len) == (8, 32, 128)
    assert not g.check(tiny["num_frames"], tiny["height"], tiny["width"])  # the defaults fit the geometry
    assert not g.check(real["num_frames"], real["height"], real["width"])


@pytest.mark.parametrize("option,value,says", [
    ("sampler_grid", "official", "sampler_grid='official'"),
    ("scheduler", "unipc", "scheduler='unipc'"),
    ("noise", "official", "noise='official'"),
    ("precision", "bf16-everything", "precision="),
    ("flow_shift", 3.0, "flow_shift=3.0"),
])
def test_unsupported_options_are_one_line(repo, option, value, says):
    with pytest.raises(UserError) as e:
        ltx.load_components(repo, dtype=torch.float32, device=torch.device("cpu"), **{option: value})
    msg = str(e.value)
    assert "\n" not in msg and says in msg
    assert option == "precision" or "LTX-Video" in msg or "dynamic" in msg


def test_broken_repo_is_one_line(repo, tmp_path):
    (tmp_path / "scheduler").mkdir()
    config = tmp_path / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "UniPCMultistepScheduler"}))
    with pytest.raises(UserError, match="FlowMatchEulerDiscreteScheduler") as e:
        ltx.load_components(tmp_path, dtype=torch.float32, device=torch.device("cpu"))
    assert "\n" not in str(e.value)
    config.write_text((repo / "scheduler" / "scheduler_config.json").read_text())
    with pytest.raises(UserError, match="config.json") as e:
        ltx.load_components(tmp_path, dtype=torch.float32, device=torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_video_generator_runs_the_family_on_the_repo(repo, ours):
    """The registered family through the public API: the same frames as the stages called directly."""
    from vidport.runtime import VideoGenerator

    with VideoGenerator.from_pretrained(repo, device="cpu", dtype="fp32", attention_backend="sdpa-math") as gen:
        assert gen.cfg.name == ltx.DEFAULT_CFG == "batched"  # the family's default strategy, as LTXPipeline runs
    with VideoGenerator.from_pretrained(repo, device="cpu", dtype="fp32", attention_backend="sdpa-math",
                                        cfg="serial") as gen:
        assert gen.defaults["fps"] == ltx.FRAME_RATE and gen.components.preset == "tiny"
        frames = gen.generate_video(PROMPT, negative_prompt=NEGATIVE, seed=SEED, **SIZE, num_inference_steps=STEPS,
                                    guidance_scale=GUIDANCE)
        assert np.array_equal(frames, ours.frames)
        assert gen.last_report.settings["scheduler"] == "FlowMatchEulerDiscreteScheduler"
        with pytest.raises(UserError, match="num_frames=10 is not of the form 8k"):
            gen.generate_video(PROMPT, num_frames=10, seed=SEED)


def test_denoising_drops_the_text_padding(components, ours, monkeypatch):
    """The DiT reads the text up to its last real token (same values up to summation order): each branch's own length
    and no mask with serial CFG, the longer branch's with the mask when batched CFG joins them; with a hook on the
    DiT (parity captures) it reads the padded text, as LTXPipeline's does."""
    seen = []
    forward = ltx.LTXDenoiser.__call__

    def spy(self, x, timestep, encoder_hidden_states, encoder_attention_mask=None):
        seen.append((encoder_hidden_states.shape[:2], encoder_attention_mask is None))
        return forward(self, x, timestep, encoder_hidden_states, encoder_attention_mask)

    monkeypatch.setattr(ltx.LTXDenoiser, "__call__", spy)
    lengths = [int(c.kwargs["encoder_attention_mask"].sum()) for c in (ours.cond, ours.uncond)]
    assert max(lengths) < family.TEXT_LEN and lengths[0] != lengths[1]
    serial = run(components, request())
    assert set(seen) == {((1, lengths[0]), True), ((1, lengths[1]), True)}
    assert serial.cond.kwargs["encoder_hidden_states"].shape[1] == family.TEXT_LEN  # the state keeps them as encoded
    torch.testing.assert_close(serial.latents, ours.latents, rtol=0, atol=1e-5)
    seen.clear()
    batched = run(components, request(), cfg="batched")
    assert set(seen) == {((2, max(lengths)), False)}
    torch.testing.assert_close(batched.latents, ours.latents, rtol=0, atol=1e-5)
    seen.clear()
    handle = components.transformer.blocks[0].register_forward_hook(lambda *a: None)
    try:
        padded = run(components, request())
    finally:
        handle.remove()
    assert {s[0][1] for s in seen} == {family.TEXT_LEN}
    torch.testing.assert_close(padded.latents, ours.latents, rtol=0, atol=1e-5)


def test_drop_common_padding_cuts_only_what_every_sample_pads():
    from vidport.runtime.pipeline import drop_common_padding, without_padding

    def cond(*valid, length=6):
        mask = torch.zeros(len(valid), length, dtype=torch.bool)
        for i, n in enumerate(valid):
            mask[i, :n] = True
        return Conditioning({"text": torch.randn(len(valid), length, 3), "mask": mask})

    a, b = cond(2), cond(4)
    got_a, got_b = drop_common_padding([a, b], "text", "mask")
    assert got_a.kwargs["text"].shape == (1, 4, 3) and got_a.kwargs["mask"].shape == (1, 4)
    assert torch.equal(got_a.kwargs["mask"], a.kwargs["mask"][:, :4])
    assert torch.equal(got_b.kwargs["text"], b.kwargs["text"][:, :4])
    assert drop_common_padding([b, None], "text", "mask")[1] is None
    empty = cond(2, 0)  # a sample with no real token attends to every position: nothing may be cut
    assert drop_common_padding([empty], "text", "mask")[0] is empty
    # no padding left in any of them: the mask goes too (the attention runs unmasked)
    alone = drop_common_padding([a], "text", "mask")[0]
    assert set(alone.kwargs) == {"text"} and torch.equal(alone.kwargs["text"], a.kwargs["text"][:, :2])
    full = drop_common_padding([cond(6)], "text", "mask")[0]
    assert set(full.kwargs) == {"text"} and full.kwargs["text"].shape == (1, 6, 3)
    assert set(drop_common_padding([a, cond(2)], "text", "mask")[1].kwargs) == {"text"}
    # per CFG strategy: branches run as one batch share a length; run apart, each has its own and no mask
    joined = without_padding(get_cfg_strategy("batched"), a, b, "text", "mask")
    assert [c.kwargs["text"].shape[1] for c in joined] == [4, 4] and all("mask" in c.kwargs for c in joined)
    apart = without_padding(get_cfg_strategy("serial"), a, b, "text", "mask")
    assert [c.kwargs["text"].shape[1] for c in apart] == [2, 4] and not any("mask" in c.kwargs for c in apart)
    assert without_padding(get_cfg_strategy("serial"), a, None, "text", "mask")[1] is None
