"""Fidelity to the official Wan2.1 release, not only to diffusers (CPU, tiny, no network, no official code).

The references here are written from the official code's formulas (Wan-Video/Wan2.1
``wan/utils/fm_solvers_unipc.py`` and ``wan/text2video.py``), not taken from vidport or diffusers: the
sigma grid, the UniPC predictor/corrector arithmetic for the official settings, the noise draw. The tests
that import the official code itself live in ``parity/test_official.py`` (skipped without a checkout).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidport.errors import UserError

PROMPT = "a cat walks on the grass in the sun"
NEGATIVE = "blurry details, low quality"
SIZE = {"num_frames": 5, "height": 32, "width": 48}  # latents [16, 2, 4, 6]


# ---------------------------------------------------------------------------------------------
# The official sampler, restated from its code
# ---------------------------------------------------------------------------------------------
def official_grid(steps: int, shift: float, T: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """FlowUniPCMultistepScheduler(num_train_timesteps=T, shift=1).set_timesteps(steps, shift=shift):
    the float32 table 1 - linspace(1, 1/T, T)[::-1] gives sigma_max = float32(0.999) and sigma_min = 0;
    linspace(sigma_max, sigma_min, steps + 1)[:-1], shifted s' = shift*s/(1+(shift-1)*s); timesteps =
    s'*T cast to int64 (truncation); sigmas = s' and a final 0, float32."""
    sigma_max = float(np.float32(1.0 - 1.0 / T))
    sigmas = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return np.append(sigmas, 0.0).astype(np.float32), (sigmas * T).astype(np.int64)


class OfficialUniPC:
    """The official FlowUniPCMultistepScheduler's arithmetic for the settings wan/text2video.py uses
    (solver_order 2, bh2, predict_x0, lower_order_final, the corrector on every step after the first), with
    its API (``set_timesteps(steps, device=, shift=)``, ``timesteps``, ``step(...)[0]``)."""

    def set_timesteps(self, steps, device=None, shift=1.0):
        sigmas, timesteps = official_grid(steps, shift)
        self.sigmas = [float(s) for s in sigmas]
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self.x0s, self.last_sample, self.index, self.warm, self.order = [], None, 0, 0, 1

    def lam(self, i):  # log(alpha) - log(sigma), alpha = 1 - sigma
        return math.log(1 - self.sigmas[i]) - math.log(self.sigmas[i]) if self.sigmas[i] > 0 else math.inf

    def step(self, model_output, t, sample, return_dict=False, generator=None):
        i = self.index
        x0 = sample - self.sigmas[i] * model_output  # flow prediction -> x0
        if i > 0 and self.last_sample is not None:
            sample = self.corrector(x0, sample)
        self.x0s = (self.x0s + [x0])[-2:]
        self.order = min(2, len(self.timesteps) - i, self.warm + 1)
        self.last_sample = sample
        prev = self.predictor(sample)
        self.warm, self.index = min(self.warm + 1, 2), i + 1
        return (prev,)

    def predictor(self, x):  # UniP-bh2 from sigma[i] to sigma[i+1]
        i, m0 = self.index, self.x0s[-1]
        s_t, s_0 = self.sigmas[i + 1], self.sigmas[i]
        h = self.lam(i + 1) - self.lam(i)
        hh = -h
        h_phi_1 = B_h = math.expm1(hh)
        x_t = s_t / s_0 * x - (1 - s_t) * h_phi_1 * m0
        if self.order == 2:  # rhos_p = 0.5 for order 2
            rk = (self.lam(i - 1) - self.lam(i)) / h
            x_t = x_t - (1 - s_t) * B_h * 0.5 * (self.x0s[-2] - m0) / rk
        return x_t

    def corrector(self, model_t, x_t):  # UniC-bh2 of the step from sigma[i-1] to sigma[i]
        i, order, m0, x = self.index, self.order, self.x0s[-1], self.last_sample
        s_t, s_0 = self.sigmas[i], self.sigmas[i - 1]
        h = self.lam(i) - self.lam(i - 1)
        rks, d1s = [], []
        for k in range(1, order):
            rk = (self.lam(i - k - 1) - self.lam(i - 1)) / h
            rks.append(rk)
            d1s.append((self.x0s[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        hh = -h
        h_phi_1 = B_h = math.expm1(hh)
        h_phi_k, factorial, R, b = h_phi_1 / hh - 1, 1, [], []
        for k in range(1, order + 1):
            R.append([r ** (k - 1) for r in rks])
            b.append(h_phi_k * factorial / B_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        rhos = [0.5] if order == 1 else np.linalg.solve(np.array(R), np.array(b)).tolist()
        corr = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0
        x_t_ = s_t / s_0 * x - (1 - s_t) * h_phi_1 * m0
        return x_t_ - (1 - s_t) * B_h * (corr + rhos[-1] * (model_t - m0))


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_repo(converted_tiny_release):
    return converted_tiny_release


@pytest.fixture(scope="module")
def official_gen(tiny_repo):
    from vidport.runtime import VideoGenerator

    return VideoGenerator.from_pretrained(tiny_repo, attention_backend="sdpa-math", dtype="fp32", device="cpu",
                                          sampler_grid="official", noise="official")


# ---------------------------------------------------------------------------------------------
# The sigma grid
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [3, 50])
def test_timesteps_are_the_official_samplers_with_the_installed_diffusers(official_gen, steps):
    from vidport.runtime.models.wan.pipeline import OfficialTimesteps
    from vidport.runtime.pipeline import PipelineState
    from vidport.runtime.pipeline.validate import validate_request

    c = official_gen.components
    shift = c.scheduler.config.flow_shift
    request = validate_request(PROMPT, "", num_inference_steps=steps, guidance_scale=5.0, seed=0, **SIZE)
    state = OfficialTimesteps(c.scheduler)(PipelineState(request=request, device=torch.device("cpu")))
    want_sigmas, want_timesteps = official_grid(steps, shift)
    assert state.timesteps.tolist() == want_timesteps.tolist()
    assert torch.equal(c.scheduler.sigmas, torch.from_numpy(want_sigmas))
    if steps == 3:
        assert shift == 5.0 and want_timesteps.tolist() == [999, 908, 713]


def test_default_grid_is_official_and_diffusers_grid_is_the_installed_schedulers(tiny_repo, official_gen):
    from diffusers import UniPCMultistepScheduler
    from vidport.runtime import VideoGenerator

    official_gen.generate_video(PROMPT, **SIZE, num_inference_steps=3, seed=0)
    assert official_gen.last_state.timesteps.tolist() == official_grid(3, 5.0)[1].tolist()
    default = VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu")
    assert default.components.sampler_grid == "official"
    gen = VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu", sampler_grid="diffusers")
    gen.generate_video(PROMPT, **SIZE, num_inference_steps=3, seed=0)
    theirs = UniPCMultistepScheduler.from_config(gen.components.scheduler.config)
    theirs.set_timesteps(3)
    assert gen.last_state.timesteps.tolist() == theirs.timesteps.tolist()
    assert gen.last_report.settings["sampler_grid"] == "diffusers"
    # euler has no official counterpart: diffusers' grid, and asking for the official one is one line
    euler = VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu", scheduler="euler")
    assert euler.components.sampler_grid == "diffusers"
    with pytest.raises(UserError, match="official sigma grid is the official UniPC sampler's"):
        VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu", scheduler="euler",
                                       sampler_grid="official")
    with pytest.raises(UserError, match="sampler_grid='nope' is not one of official, diffusers"):
        VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu", sampler_grid="nope")


def test_the_restated_sampler_is_diffusers_unipc_on_the_official_grid():
    """The test's reference arithmetic is UniPC's: on random model outputs it steps as diffusers' UniPC fed the
    official grid (what the runtime does), so the pipeline test below checks the runtime, not this class."""
    from diffusers import UniPCMultistepScheduler
    from vidport.runtime.models.wan import family

    g = torch.Generator().manual_seed(0)
    ours, theirs = OfficialUniPC(), UniPCMultistepScheduler(**family.scheduler_config())
    ours.set_timesteps(6, shift=5.0)
    theirs.set_timesteps(6)
    sigmas, timesteps = official_grid(6, 5.0)
    theirs.sigmas, theirs.timesteps = torch.from_numpy(sigmas), torch.from_numpy(timesteps)
    x = y = torch.randn(2, 3, 4, generator=g)
    for t in theirs.timesteps:
        out = torch.randn(2, 3, 4, generator=g)
        x, y = ours.step(out, t, x)[0], theirs.step(out, t, y, return_dict=False)[0]
        torch.testing.assert_close(x, y, rtol=0, atol=2e-5)


def test_pipeline_latents_equal_an_official_style_sampling_loop(tiny_repo, official_gen):
    """VideoGenerator (official grid and noise) vs the official loop (wan/text2video.py) with the restated
    official scheduler, diffusers' DiT and diffusers' prompt encoding on the same weights: 3 steps, CFG 5."""
    from diffusers import WanPipeline
    from vidport.runtime.models.wan.parity import official_noise, official_sampling_loop

    official_gen.generate_video(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=3,
                                guidance_scale=5.0, seed=7)
    got = official_gen.last_state.latents

    pipe = WanPipeline.from_pretrained(tiny_repo, dtype=torch.float32)
    pipe.transformer.set_attention_backend("_native_math")
    cpu = torch.device("cpu")

    def embed(text):
        return [pipe._get_t5_prompt_embeds(text, max_sequence_length=512, device=cpu)[0]]

    def dit(x_list, t, context, seq_len):  # the official model's signature over diffusers' model
        out = pipe.transformer(torch.stack(x_list), t, torch.stack(context), return_dict=False)[0]
        return [u.float() for u in out]

    noise = official_noise((16, 2, 4, 6), 7, cpu)
    with torch.no_grad():
        want = official_sampling_loop(dit, OfficialUniPC(), noise, embed(PROMPT), embed(NEGATIVE), steps=3,
                                      shift=5.0, guide_scale=5.0, seq_len=2 * 2 * 3, device=cpu)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-4,
                               msg=lambda m: f"runtime (official grid) vs the official-style loop: {m}")
    assert want.abs().max() > 0.1  # not a degenerate comparison


# ---------------------------------------------------------------------------------------------
# Seeds, negative prompt, frames
# ---------------------------------------------------------------------------------------------
def test_official_noise_is_the_official_draw(official_gen, tiny_repo):
    """wan/text2video.py: torch.randn(C, f, h, w, dtype=float32, device=dev, generator=Generator(dev).seed(s)).
    On a CPU that is the CPU generator's draw, so both modes agree there (a GPU draws other numbers)."""
    official_gen.generate_video(PROMPT, **SIZE, num_inference_steps=1, guidance_scale=1.0, seed=123)
    want = torch.randn(16, 2, 4, 6, dtype=torch.float32, device="cpu",
                       generator=torch.Generator(device="cpu").manual_seed(123))
    assert torch.equal(official_gen.last_state.initial_noise[0], want)
    assert official_gen.last_report.settings["noise"] == "official"


def test_generate_reports_the_fidelity_settings_and_checks_them(official_gen, tiny_repo):
    from vidport.runtime import VideoGenerator

    official_gen.generate_video(PROMPT, **SIZE, num_inference_steps=1, seed=0)
    s = official_gen.last_report.settings
    assert (s["sampler_grid"], s["noise"], s["precision"]) == ("official", "official", "official")
    for bad in ({"noise": "gpu"}, {"precision": "fp8"}):
        with pytest.raises(UserError, match="is not one of"):
            VideoGenerator.from_pretrained(tiny_repo, device="cpu", **bad)


def test_empty_negative_prompt_says_it_is_not_the_official_meaning(tmp_path, capsys):
    from vidport.porting.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", str(tmp_path / "missing"), "--prompt", "p", "--negative-prompt", "", "-o",
              str(tmp_path / "a.mp4")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--negative-prompt '' encodes the empty text" in err and "official sampler uses its default" in err


# ---------------------------------------------------------------------------------------------
# The official bf16 recipe of the native DiT
# ---------------------------------------------------------------------------------------------
def test_official_precision_keeps_the_stream_and_head_in_fp32_and_is_closer_to_fp32(tiny_repo):
    from vidport.runtime.loading import load_transformer
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.model import WanDiT

    folder = tiny_repo / "transformer"
    ref = load_transformer(folder, family.SPEC).eval()
    fast = load_transformer(folder, family.SPEC, dtype=torch.bfloat16)
    official = load_transformer(folder, family.SPEC, dtype=torch.bfloat16, keep_fp32=WanDiT.OFFICIAL_FP32_MODULES)
    official.set_precision("official")
    assert official.head.proj.weight.dtype == official.time_proj.weight.dtype == torch.float32
    assert fast.head.proj.weight.dtype == fast.time_proj.weight.dtype == torch.bfloat16
    assert official.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 16, 3, 12, 20, generator=g), torch.tensor([700]), torch.randn(1, 7, 32, generator=g)
    seen = []
    hook = official.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        y32 = ref(x, t, ctx)
        errors = {name: ((m(x.bfloat16(), t, ctx.bfloat16()).float() - y32).norm() / y32.norm()).item()
                  for name, m in (("fast", fast), ("official", official))}
        ref.set_precision("official")
        same = torch.equal(ref(x, t, ctx), y32)  # in fp32 the two recipes are one
    hook.remove()
    assert seen == [torch.float32]  # the residual stream between blocks
    assert errors["official"] < errors["fast"], errors
    assert same
    with pytest.raises(ValueError, match="unknown precision"):
        official.set_precision("fp8")
