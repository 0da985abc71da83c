"""VideoGenerator and `port generate` against diffusers' WanPipeline (the external reference) with the same
weights and seed: on the embedded tiny official release converted by `port convert`, and on a tiny repo
written by diffusers itself. Both sides use the SDPA math kernel."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vidport.errors import UserError

TOKENIZER = Path(__file__).resolve().parents[1] / "official_weights/wan2.1-t2v-tiny/google/umt5-xxl"
PROMPT = "a cat walks on the grass in the sun"
NEGATIVE = "blurry details, low quality"
SIZE = {"num_frames": 5, "height": 32, "width": 48}  # latents [1, 16, 2, 4, 6]


def write_tiny_repo(out: Path) -> Path:
    """A tiny Wan T2V repo in the Diffusers layout, written by diffusers/transformers themselves."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.config import preset

    torch.manual_seed(0)
    dit = WanTransformer3DModel(**{k: v for k, v in preset("tiny").to_diffusers().items() if not k.startswith("_")})
    with torch.no_grad():  # default init leaves some paths near zero: randomize every tensor
        for name, p in dit.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.1) / max(1, p.shape[-1]) ** 0.5
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=family.SAMPLING["tiny"]["flow_shift"])
    pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(TOKENIZER),
                       text_encoder=UMT5EncoderModel(UMT5Config(**family.text_encoder_config("tiny"))),
                       vae=AutoencoderKLWan(**family.vae_config("tiny")), scheduler=scheduler, transformer=dit)
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_repo(converted_tiny_release) -> Path:
    return converted_tiny_release


@pytest.fixture(scope="module")
def generator(tiny_repo):
    from vidport.runtime import VideoGenerator

    # diffusers-compatible mode: diffusers' sigma grid (the official one is tested in test_official_fidelity.py)
    return VideoGenerator.from_pretrained(tiny_repo, attention_backend="sdpa-math", dtype="fp32", device="cpu",
                                          sampler_grid="diffusers")


def diffusers_pipeline(repo):
    from diffusers import WanPipeline

    # fp32 everywhere, like the runtime with dtype="fp32" (the converted umT5 is stored in bf16, as released)
    pipe = WanPipeline.from_pretrained(repo, dtype=torch.float32)
    pipe.transformer.set_attention_backend("_native_math")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference(tiny_repo):
    return diffusers_pipeline(tiny_repo)


def run_reference(pipe, seed, guidance=5.0, steps=3):
    """diffusers' video (float in [0, 1]) and its final latents (captured by the step callback)."""
    captured = {}

    def keep_latents(_pipe, i, t, kwargs):
        captured["latents"] = kwargs["latents"]
        return {}

    video = pipe(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                 callback_on_step_end=keep_latents).frames[0]
    return video, captured["latents"]


# ---------------------------------------------------------------------------------------------
# Against diffusers
# ---------------------------------------------------------------------------------------------
def test_latents_and_frames_match_diffusers(generator, reference):
    frames = generator.generate_video(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=3,
                                      guidance_scale=5.0, seed=7)
    want_video, want_latents = run_reference(reference, seed=7)

    torch.testing.assert_close(generator.last_state.latents, want_latents, rtol=0, atol=1e-4,
                               msg=lambda m: f"runtime latents after 3 steps vs diffusers WanPipeline: {m}")
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 48, 3) == want_video.shape
    diff = np.abs(frames.astype(np.float64) - want_video.astype(np.float64) * 255)
    within = (diff <= 1.0).mean()
    assert within >= 0.99, f"runtime vs diffusers frames: only {within:.2%} of pixels within 1/255"
    assert frames.std() > 1.0, "frames are flat: the comparison would prove nothing"


def test_repo_written_by_diffusers_matches_diffusers(tmp_path):
    """A repo saved by diffusers' own save_pretrained (hub-like, randomized DiT) runs the same way."""
    from vidport.runtime import VideoGenerator

    repo = write_tiny_repo(tmp_path / "repo")
    gen = VideoGenerator.from_pretrained(repo, attention_backend="sdpa-math", dtype="fp32", device="cpu",
                                         sampler_grid="diffusers")
    gen.generate_video(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=2, guidance_scale=5.0, seed=1)
    _, want = run_reference(diffusers_pipeline(repo), seed=1, steps=2)
    torch.testing.assert_close(gen.last_state.latents, want, rtol=0, atol=1e-4,
                               msg=lambda m: f"runtime vs diffusers on a diffusers-written repo: {m}")


def test_initial_noise_is_diffusers_noise_for_the_seed(generator, reference):
    generator.generate_video(PROMPT, **SIZE, num_inference_steps=1, guidance_scale=1.0, seed=123)
    want = reference.prepare_latents(1, 16, SIZE["height"], SIZE["width"], SIZE["num_frames"], torch.float32,
                                     torch.device("cpu"), torch.Generator("cpu").manual_seed(123))
    assert torch.equal(generator.last_state.initial_noise, want)


def test_guidance_one_runs_one_branch_and_matches_diffusers(generator, reference):
    """Guidance 1 disables CFG (one forward per step); diffusers' guidance-1 path is the reference."""
    calls = []
    dit = generator.components.transformer

    class Counting(torch.nn.Module):  # any forward(x, timestep, context) module can stand in for the DiT
        def forward(self, x, timestep, context):
            calls.append(x.shape[0])
            return dit(x, timestep, context)

    generator.components.transformer = Counting()
    try:
        generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, guidance_scale=1.0, seed=5)
        assert calls == [1, 1]
        guided_latents = None
        calls.clear()
        generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, guidance_scale=5.0, seed=5)
        assert calls == [1, 1, 1, 1]
        guided_latents = generator.last_state.latents
    finally:
        generator.components.transformer = dit
    generator.generate_video(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=2,
                             guidance_scale=1.0, seed=5)
    _, want = run_reference(reference, seed=5, guidance=1.0, steps=2)
    torch.testing.assert_close(generator.last_state.latents, want, rtol=0, atol=1e-4,
                               msg=lambda m: f"runtime (guidance 1) vs diffusers: {m}")
    assert not torch.allclose(guided_latents, want, atol=1e-3)


def test_batched_cfg_equals_serial(generator):
    generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, seed=3)
    serial = generator.last_state.latents
    cfg = generator.cfg
    try:
        from vidport.runtime.pipeline import BatchedCFG

        generator.cfg = BatchedCFG()
        generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, seed=3)
    finally:
        generator.cfg = cfg
    torch.testing.assert_close(generator.last_state.latents, serial, rtol=0, atol=1e-5)


def test_prompt_encoding_zero_pads_like_diffusers(generator, reference):
    from vidport.runtime.models.wan.pipeline import EncodePrompt

    c = generator.components
    text = "  a  cat &amp; a dog\n walk "  # exercises the cleaning: HTML entity, whitespace runs
    got = EncodePrompt(c.tokenizer, c.text_encoder, 512, torch.float32).embed(text, torch.device("cpu"))
    want = reference._get_t5_prompt_embeds(text, max_sequence_length=512, device=torch.device("cpu"))
    assert got.shape == want.shape == (1, 512, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert got[0, 20:].abs().max() == 0  # zero after the real tokens


# ---------------------------------------------------------------------------------------------
# Seeds, defaults, the mp4
# ---------------------------------------------------------------------------------------------
def test_seed_semantics(generator):
    a = generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, seed=11)
    b = generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, seed=11)
    c = generator.generate_video(PROMPT, **SIZE, num_inference_steps=2, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tiny_weights_get_tiny_defaults_and_fp32_on_cpu(generator):
    from vidport.runtime.models.wan import family

    assert generator.components.preset == "tiny"
    assert generator.components.dtype == torch.float32
    frames = generator.generate_video(PROMPT, seed=0)
    d = family.SAMPLING["tiny"]
    assert frames.shape == (d["num_frames"], d["height"], d["width"], 3)
    s = generator.last_report.settings
    assert s["num_inference_steps"] == d["num_inference_steps"] and s["negative_prompt"] == family.NEGATIVE_PROMPT
    assert len(generator.last_report.step_seconds) == d["num_inference_steps"]


def test_mp4_is_written_and_readable(generator, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "cat.mp4"
    frames = generator.generate_video(PROMPT, **SIZE, num_inference_steps=1, seed=0, output_path=out)
    video = iio.imread(out, plugin="pyav") if _has_pyav() else np.stack(list(_read_ffmpeg(out)))
    assert video.shape == frames.shape
    assert np.abs(video.astype(int) - frames.astype(int)).mean() < 40  # lossy codec, same picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.mp4"]
    assert generator.last_report.output_path == str(out)


def test_mp4_write_is_atomic(tmp_path, monkeypatch):
    """A failure while encoding leaves neither the target file nor a temporary one."""
    import imageio.v2 as imageio
    from vidport.runtime.video import write_mp4

    real_get_writer = imageio.get_writer

    def failing_writer(*args, **kwargs):
        writer = real_get_writer(*args, **kwargs)
        count = {"n": 0}
        append = writer.append_data

        def append_then_fail(frame):
            count["n"] += 1
            if count["n"] == 3:
                raise OSError("disk full")
            append(frame)

        writer.append_data = append_then_fail
        return writer

    monkeypatch.setattr(imageio, "get_writer", failing_writer)
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    with pytest.raises(UserError, match="disk full"):
        write_mp4(frames, tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Validation and loading errors: one clear line each
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    ({"num_frames": 6}, "4k+1"),
    ({"num_frames": 0}, "4k+1"),
    ({"height": 40}, "height=40 is not a positive multiple of 16"),
    ({"width": 0}, "width=0"),
    ({"num_inference_steps": 0}, "num_inference_steps=0 must be >= 1"),
    ({"guidance_scale": -0.5}, "guidance_scale=-0.5 must be a number >= 0"),
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "  \n"}, "prompt is empty"),
    ({"seed": -1}, "seed=-1"),
    ({"output_path": "/nonexistent-folder/x.mp4"}, "does not exist"),
    ({"output_path": "video.avi"}, "must end in .mp4"),
])
def test_validation_errors(generator, kwargs, needle):
    args = {"prompt": PROMPT, **SIZE, "num_inference_steps": 1, "seed": 0, **kwargs}
    with pytest.raises(UserError) as err:
        generator.generate_video(args.pop("prompt"), **args)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_output_in_a_file_not_a_folder(generator, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="does not exist"):
        generator.generate_video(PROMPT, **SIZE, num_inference_steps=1, seed=0,
                                 output_path=tmp_path / "file" / "x.mp4")


def test_loading_errors(tmp_path, monkeypatch):
    from vidport.runtime import VideoGenerator
    from vidport.runtime import generator as gen_module

    with pytest.raises(UserError, match="no such folder"):
        VideoGenerator.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match="no model_index.json"):
        VideoGenerator.from_pretrained(tmp_path)
    with pytest.raises(UserError, match="choose bf16 or fp32"):
        VideoGenerator.from_pretrained(tmp_path, dtype="fp8")
    monkeypatch.setattr(gen_module, "parallel_launcher", lambda: None)
    with pytest.raises(UserError, match="num_gpus=2 needs runtime.parallel.launch"):
        VideoGenerator.from_pretrained(tmp_path, num_gpus=2)


def test_cuda_graph_needs_one_cuda_device(tiny_repo):
    from vidport.runtime import VideoGenerator
    from vidport.runtime.cuda_graph import CUDAGraphed
    from vidport.runtime.models.wan.config import preset
    from vidport.runtime.models.wan.model import WanDiT

    with pytest.raises(UserError, match=r"^cuda_graph needs a CUDA device, not cpu; drop cuda_graph"):
        VideoGenerator.from_pretrained(tiny_repo, device="cpu", cuda_graph=True)
    with pytest.raises(UserError, match=r"^cuda_graph runs on one GPU; use num_gpus=1"):
        VideoGenerator.from_pretrained(tiny_repo, num_gpus=2, cuda_graph=True)
    graphed = CUDAGraphed(WanDiT(preset("tiny")))
    with pytest.raises(UserError, match="CUDA graphs need the model on a CUDA device, it is on cpu"):
        graphed(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), torch.randn(1, 3, 32))


def test_hub_id_offline_fails_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from vidport.runtime import VideoGenerator

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as err:
        VideoGenerator.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    msg = str(err.value)
    assert "local Diffusers-format folder" in msg and "port convert" in msg and "\n" not in msg


def test_num_gpus_delegates_to_runtime_parallel_launch(monkeypatch):
    from vidport.runtime import VideoGenerator
    from vidport.runtime import generator as gen_module

    seen = {}
    fake = types.SimpleNamespace(from_pretrained=lambda path, **kw: seen.update(path=path, **kw) or "parallel")
    monkeypatch.setattr(gen_module, "parallel_launcher", lambda: fake)
    assert VideoGenerator.from_pretrained("some/repo", num_gpus=4, attention_backend="sdpa") == "parallel"
    assert seen["path"] == "some/repo" and seen["num_gpus"] == 4 and seen["attention_backend"] == "sdpa"


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
def test_cli_json(tiny_repo, tmp_path, monkeypatch, capsys):
    from vidport.porting.cli import main

    monkeypatch.setenv("VIDPORT_ATTENTION_BACKEND", "sdpa-math")
    out = tmp_path / "v.mp4"
    main(["generate", str(tiny_repo), "--prompt", PROMPT, "--steps", "2", "--seed", "4", "-o", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(out) and out.is_file()
    assert set(report["timings_s"]) >= {"load", "encode", "denoise", "decode", "write"}
    assert len(report["denoise_step_s"]) == 2 and report["settings"]["seed"] == 4
    assert report["settings"]["dtype"] == "float32"


def test_cli_error_is_one_line(tiny_repo, tmp_path, capsys):
    from vidport.porting.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(tiny_repo), "--prompt", PROMPT, "--num-frames", "6", "-o", str(tmp_path / "v.mp4")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: num_frames=6 is not of the form 4k+1")
    assert not (tmp_path / "v.mp4").exists()


def test_import_runtime_is_light():
    import subprocess

    code = "import vidport.runtime, sys; print('diffusers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _read_ffmpeg(path):
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        yield from reader


@pytest.mark.parametrize("component,file", [("text_encoder", "model.safetensors"),
                                            ("vae", "diffusion_pytorch_model.safetensors")])
def test_strict_load_of_library_components(tiny_repo, tmp_path, component, file):
    """transformers/diffusers only warn about missing tensors (and initialize them randomly): we fail."""
    import shutil

    from safetensors.torch import load_file, save_file
    from vidport.runtime import VideoGenerator

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    tensors = load_file(repo / component / file)
    dropped = [k for k in sorted(tensors) if "shared" not in k and "embed_tokens" not in k][-1]  # not a tie
    del tensors[dropped]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, repo / component / file, metadata={"format": "pt"})
    with pytest.raises(UserError) as err:
        VideoGenerator.from_pretrained(repo, device="cpu")
    msg = str(err.value)
    assert "strict load failed" in msg and dropped in msg and "extra.weight" in msg and "\n" not in msg


def test_euler_option_matches_diffusers_with_euler(tiny_repo, reference):
    """scheduler="euler": flow-match Euler with the configured shift, as diffusers steps it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from vidport.runtime import VideoGenerator

    gen = VideoGenerator.from_pretrained(tiny_repo, attention_backend="sdpa-math", dtype="fp32", device="cpu",
                                         scheduler="euler")
    gen.generate_video(PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=3, guidance_scale=5.0, seed=2)
    unipc = reference.scheduler
    reference.scheduler = FlowMatchEulerDiscreteScheduler(shift=unipc.config.flow_shift)
    try:
        _, want = run_reference(reference, seed=2)
    finally:
        reference.scheduler = unipc
    assert type(gen.components.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    torch.testing.assert_close(gen.last_state.latents, want, rtol=0, atol=1e-4,
                               msg=lambda m: f"runtime (euler) vs diffusers (euler): {m}")


def test_cli_prints_path_and_timings(tiny_repo, tmp_path, monkeypatch, capsys):
    from vidport.porting.cli import main

    monkeypatch.chdir(tmp_path)  # the default output goes to ./out/
    main(["generate", str(tiny_repo), "--prompt", PROMPT, "--steps", "1", "--guidance", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"wrote out/{tiny_repo.name}-seed0.mp4")
    assert (tmp_path / "out" / f"{tiny_repo.name}-seed0.mp4").is_file()
    assert lines[1].startswith("timings: load ") and "denoise" in lines[1] and "s/step" in lines[1]


def test_a_generator_without_text_encoder_says_so(tiny_repo):
    from vidport.runtime import VideoGenerator

    gen = VideoGenerator.from_pretrained(tiny_repo, device="cpu", text_encoder=False)
    assert gen.components.text_encoder is None
    with pytest.raises(UserError) as info:
        gen.generate_video("a fox", num_frames=5, height=32, width=48, num_inference_steps=1)
    assert "text_encoder=False" in str(info.value) and "\n" not in str(info.value)


def test_auto_attention_is_chosen_for_the_models_head_size(tiny_repo, monkeypatch):
    """The generator hands ``auto`` the head size from the repo's transformer config (FlashAttention-4 wins at 128
    only, runtime/attention.py AUTO_RULES)."""
    import json

    from vidport.runtime import VideoGenerator, attention

    seen = []
    real = attention.resolve_backends
    monkeypatch.setattr(attention, "resolve_backends",
                        lambda *a, **k: seen.append(k.get("head_dim")) or real(*a, **k))
    VideoGenerator.from_pretrained(tiny_repo, dtype="fp32", device="cpu")
    config = json.loads((tiny_repo / "transformer" / "config.json").read_text())
    assert seen == [config["attention_head_dim"]]
