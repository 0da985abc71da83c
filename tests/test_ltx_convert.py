"""`port convert` on the embedded tiny LTX-Video release (official single-file layout): the output loads in diffusers
(``LTXPipeline``, no missing or unexpected keys, denoising steps and the timestep-conditioned decode) and in the
native runtime strictly; values land under their Diffusers names unchanged; the emitted script writes the same bytes;
the real 2B key listing maps one-to-one onto the native model; bad input is one line, exit 2, nothing written.

An optional test compares the official ``Transformer3DModel`` (loaded by the official code from the tiny single file)
with the native DiT loaded from the converted repo; it runs when ``VIDPORT_LTX_OFFICIAL_ROOT`` names a checkout (or
export) of github.com/Lightricks/LTX-Video (docs/ltx-video.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_convert import LoadLog, port
from vidport.porting.namemap import NameMap
from vidport.porting.sources import KeysFileSource, open_source
from vidport.runtime.models.ltx_video import family, release

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "official_weights" / "ltx-video-tiny"
CKPT = RELEASE / "ltx-video-tiny.safetensors"
FAMILY = "ltx-video"
OFFICIAL_ENV = "VIDPORT_LTX_OFFICIAL_ROOT"


def convert_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", str(src), "--family", FAMILY, "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ltx") / "ltx-tiny"
    assert port(*convert_args(RELEASE, out)) == 0
    return out


def test_layout(converted: Path):
    index = json.loads((converted / "model_index.json").read_text())
    assert index["_class_name"] == "LTXPipeline"
    assert index["vae"] == ["diffusers", "AutoencoderKLLTXVideo"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    sched = json.loads((converted / "scheduler/scheduler_config.json").read_text())
    # the official RectifiedFlowScheduler's SD3 shifting with its terminal sigma, as diffusers' converter writes it
    assert (sched["use_dynamic_shifting"], sched["base_shift"], sched["max_shift"], sched["shift_terminal"]) == \
        (True, 0.95, 2.05, 0.1)
    vae = json.loads((converted / "vae/config.json").read_text())
    assert vae["timestep_conditioning"] is True and vae["latent_channels"] == 16
    for f in (RELEASE / "tokenizer").iterdir():
        assert (converted / "tokenizer" / f.name).read_bytes() == f.read_bytes()
    record = json.loads((converted / "conversion.json").read_text())
    assert record["family"] == FAMILY


def test_ltx_pipeline_loads_and_runs(converted: Path):
    """No missing/unexpected-key messages; two steps (diffusers' terminal-shift stretch divides by zero for one)
    and the timestep-conditioned decode."""
    from diffusers import LTXPipeline

    with LoadLog() as log:
        pipe = LTXPipeline.from_pretrained(converted)
    assert not log.bad(), log.bad()
    assert any("LTXVideoTransformer3DModel" in m for m in log.messages)
    out = pipe("a cat walks on the grass", negative_prompt="blurry", height=64, width=96, num_frames=9,
               num_inference_steps=2, decode_timestep=0.05, decode_noise_scale=0.025, output_type="np",
               generator=torch.Generator("cpu").manual_seed(0))
    frames = out.frames[0]
    assert frames.shape == (9, 64, 96, 3) and torch.isfinite(torch.as_tensor(frames)).all()


def test_values_follow_the_official_release(converted: Path):
    """Every converted tensor equals the official one the maps name (transformer and VAE from their prefixes of the
    single file, the text encoder's tied embedding twice)."""
    for comp in ("transformer", "vae"):
        src = open_source(f"{CKPT}#{family.PREFIXES[comp]}")
        plan = NameMap.load(family.OFFICIAL_TO_DIFFUSERS[comp]).plan(src.keys())
        with safe_open(converted / comp / "diffusion_pytorch_model.safetensors", "pt") as f:
            assert sorted(f.keys()) == sorted(op.target for op in plan.ops)
            for op in plan.ops:
                assert torch.equal(f.get_tensor(op.target), src.get(op.sources[0])), op.target
    with safe_open(converted / "vae/diffusion_pytorch_model.safetensors", "pt") as f:
        std = f.get_tensor("latents_std")
    with safe_open(CKPT, "pt") as f:
        assert torch.equal(std, f.get_tensor("vae.per_channel_statistics.std-of-means"))
    with safe_open(RELEASE / "text_encoder/model.safetensors", "pt") as f:
        shared = f.get_tensor("shared.weight")
    with safe_open(converted / "text_encoder/model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("encoder.embed_tokens.weight"), shared)


def test_native_runtime_loads_strictly_and_equals_diffusers(converted: Path):
    from diffusers import LTXVideoTransformer3DModel
    from vidport.runtime.loading import load_transformer

    native = load_transformer(converted / "transformer", FAMILY).eval()
    assert not any(p.is_meta for p in native.parameters())
    ref = LTXVideoTransformer3DModel.from_pretrained(converted / "transformer").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * 2 * 3, 16, generator=g)
    text = torch.randn(2, 7, 24, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    t = torch.tensor([900.0, 250.0])
    kw = dict(num_frames=2, height=2, width=3, rope_interpolation_scale=(8 / 25, 32, 32))
    with torch.no_grad():
        want = ref(x, text, t, mask, **kw, return_dict=False)[0]
        got = native(x, text, t, mask, **kw)
    assert (got - want).abs().max() <= 1e-5


def test_real_2b_listing_maps_one_to_one_onto_the_native_model():
    from vidport.families import native_meta_module

    diffusers = KeysFileSource(family.REFERENCE_KEYS / "diffusers_transformer_2b_keys.txt").shapes()
    plan = NameMap.load(family.DIFFUSERS_TO_NATIVE).plan(diffusers)
    assert not plan.unmatched and not plan.dropped
    native = {k: tuple(v.shape) for k, v in native_meta_module("ltx-video-2b").state_dict().items()}
    assert {op.target: tuple(op.target_shape(diffusers)) for op in plan.ops} == native
    # and the official listing reaches it through both maps
    official = KeysFileSource(family.REFERENCE_KEYS / "official_transformer_2b_keys.txt").shapes()
    step = NameMap.load(family.OFFICIAL_TO_DIFFUSERS["transformer"]).plan(official)
    assert {op.target: tuple(op.target_shape(official)) for op in step.ops} == diffusers


def test_release_given_as_its_file_and_known_configs(converted: Path, tmp_path: Path):
    out = tmp_path / "from-file"
    assert port(*convert_args(CKPT, out)) == 0
    for rel in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (out / rel).read_bytes() == (converted / rel).read_bytes()
    # the target configs derived from the official metadata are the published ones
    assert release.known_configs()["tiny"] == release.target_configs(release.read(RELEASE))


def test_emitted_script_is_byte_identical(converted: Path, tmp_path: Path):
    script = tmp_path / "convert_ltx.py"
    assert port(*convert_args(RELEASE, converted, "--emit-script", script)) == 0
    out = tmp_path / "script-out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-I", str(script), str(RELEASE), str(out)], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    ours = sorted(p.relative_to(converted) for p in converted.rglob("*") if p.is_file() and p.name != "conversion.json")
    theirs = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "conversion.json")
    assert ours == theirs
    for rel in ours:
        assert (converted / rel).read_bytes() == (out / rel).read_bytes(), rel


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------
def _rewrite_single_file(src: Path, dst: Path, keep) -> None:
    from safetensors.torch import save_file

    with safe_open(src, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=meta)


def _copy_release(tmp_path: Path, keep) -> Path:
    dst = tmp_path / "release"
    shutil.copytree(RELEASE, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(RELEASE / "text_encoder/model.safetensors", dst / "text_encoder/model.safetensors")
    _rewrite_single_file(CKPT, dst / CKPT.name, keep)
    return dst


def _one_line_error(capsys, out: Path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())
    return err[0]


def test_single_file_without_the_vae_prefix(tmp_path: Path, capsys):
    bad = _copy_release(tmp_path, lambda k: not k.startswith("vae."))
    out = tmp_path / "out"
    assert port(*convert_args(bad, out, "--family", FAMILY)) == 2
    line = _one_line_error(capsys, out)
    assert "vae." in line and bad.name in line


def test_transformer_with_a_missing_block(tmp_path: Path, capsys):
    bad = _copy_release(tmp_path, lambda k: ".transformer_blocks.1." not in k)
    out = tmp_path / "out"
    assert port(*convert_args(bad, out)) == 2
    line = _one_line_error(capsys, out)
    assert "transformer_blocks.1" in line


def test_wrong_family_names_the_family_the_files_look_like(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert port("convert", str(RELEASE), "--family", "wan2.1-t2v", "--out", str(out), "--no-progress") == 2
    line = _one_line_error(capsys, out)
    assert "looks like a ltx-video release" in line and "--family ltx-video" in line
    wan = ROOT / "official_weights" / "wan2.1-t2v-tiny"
    assert port("convert", str(wan), "--family", FAMILY, "--out", str(out), "--no-progress") == 2
    assert "looks like a wan2.1-t2v release" in _one_line_error(capsys, out)


# ----------------------------------------------------------------------------------------------
# optional: the official Transformer3DModel on the tiny single file
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.environ.get(OFFICIAL_ENV), reason=f"set {OFFICIAL_ENV} to a checkout of "
                    "github.com/Lightricks/LTX-Video to compare with the official Transformer3DModel")
def test_official_transformer_equals_the_native_dit(converted: Path):
    from vidport.runtime.loading import load_transformer

    root = Path(os.environ[OFFICIAL_ENV]).expanduser()
    sys.path.insert(0, str(root))
    try:
        from ltx_video.models.transformers.transformer3d import Transformer3DModel
        official = Transformer3DModel.from_pretrained(CKPT).float().eval()
    finally:
        sys.path.remove(str(root))
    native = load_transformer(converted / "transformer", FAMILY).eval()
    g = torch.Generator().manual_seed(0)
    f, h, w = 2, 2, 3
    x = torch.randn(2, f * h * w, 16, generator=g)
    text = torch.randn(2, 7, 24, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    t = torch.tensor([0.9, 0.25])  # the official model takes sigmas and scales them by timestep_scale_multiplier
    scale = (8 / 25, 32, 32)
    # the official fractional coordinates [B, 3, S]: (frame * 8 / 25 ... as the official pipeline builds them
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
    coords = grid.float() * torch.tensor(scale, dtype=torch.float32)[:, None]
    coords = coords[None].expand(2, -1, -1)
    with torch.no_grad():
        want = official(x, indices_grid=coords, encoder_hidden_states=text, timestep=t[:, None],
                        encoder_attention_mask=mask, return_dict=False)[0]
        got = native(x, text, t * 1000, mask, num_frames=f, height=h, width=w, rope_interpolation_scale=scale)
    assert (got - want).abs().max() <= 1e-5


def test_bf16_conversion_keeps_the_libraries_fp32_modules(tmp_path: Path):
    """--dtype bf16: every tensor bf16 but those the libraries keep in fp32 (T5's feed-forward output ``wo``);
    LTXPipeline loads it in bf16."""
    from diffusers import LTXPipeline

    out = tmp_path / "bf16"
    assert port(*convert_args(RELEASE, out, "--dtype", "bf16")) == 0
    with safe_open(out / "transformer/diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    with safe_open(out / "text_encoder/model.safetensors", "pt") as f:
        fp32 = {k for k in f.keys() if f.get_slice(k).get_dtype() == "F32"}
    assert fp32 and all(".wo." in k for k in fp32)
    with LoadLog() as log:
        LTXPipeline.from_pretrained(out, dtype=torch.bfloat16)
    assert not log.bad(), log.bad()


def test_truncated_single_file_is_named_as_damaged(tmp_path: Path, capsys):
    """A truncated checkpoint is not reported as a missing one: the error names the file and its damage, whether the
    release is given as its folder or as the file."""
    bad = _copy_release(tmp_path, lambda k: True)
    ckpt = bad / CKPT.name
    with open(ckpt, "r+b") as f:
        f.truncate(ckpt.stat().st_size // 2)
    out = tmp_path / "out"
    for src in (bad, ckpt):
        assert port(*convert_args(src, out)) == 2
        line = _one_line_error(capsys, out)
        assert CKPT.name in line and "truncated" in line
