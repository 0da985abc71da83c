"""SSIM regression against reference videos in ``ssim_refs/``.

Layout: ``ssim_refs/<family>/<device-class>/<attention-backend>/<prompt-slug>-seed<k>.mp4`` with a
``.json`` of metadata beside it (and a ``.npz`` of the same frames, see ``write_reference``).
References are rendered by the reference implementation (the diffusers pipeline the repo names, e.g.
``WanPipeline``) on the same
weights; ``check`` renders with the vidport runtime and compares frame by frame with scikit-image's
``structural_similarity(channel_axis=-1, data_range=255)`` on uint8 RGB frames.

References rendered by the family's official code (``reference="official"``, from a checkout: the family's
``official_render``) live one folder down, in ``.../<attention-backend>/official/``, and are checked against the
runtime in its official mode (official sigma grid, noise and precision); the diffusers ones against its
diffusers-compatible mode.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vidport.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
REFS = ROOT / "ssim_refs"
DATA_RANGE = 255  # uint8 frames
REFERENCE_FPS = 16  # the reference files' container rate: frames are compared one by one, it only affects playback


@dataclass(frozen=True)
class Threshold:
    mean: float  # mean SSIM over frames must be >= this
    min: float  # and every frame >= this


# vidport attention backend -> the diffusers attention backend computing the same kernel
DIFFUSERS_BACKENDS = {"sdpa": "native", "sdpa-math": "_native_math", "sdpa-flash": "_native_flash",
                      "sdpa-efficient": "_native_efficient", "sdpa-cudnn": "_native_cudnn", "flash-attn": "flash"}


def threshold(family: str, device_class: str) -> Threshold:
    """The family's bar for a device class (its ``SSIMSpec.thresholds``: one per family and device class)."""
    from vidport.families import get_family

    table = get_family(family).ssim.thresholds
    key = device_class if device_class in table else device_class.split("-", 1)[0]
    if key not in table:
        raise UserError(f"no SSIM threshold for {family} on {device_class!r}; known: {', '.join(table)}")
    return Threshold(*table[key])


def device_class(device: str) -> str:
    """'cpu', or 'cuda-<gpu name slug>' (e.g. cuda-nvidia-h100-80gb-hbm3): numerics differ by GPU model."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(dev))
    return dev.type


def device_name(device: str) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str, max_len: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-")


REFERENCES = ("diffusers", "official")


def reference_dir(family: str, dev_class: str, backend: str, root: Path = REFS, reference: str = "diffusers") -> Path:
    folder = Path(root) / family / dev_class / backend
    return folder / "official" if reference == "official" else folder


def reference_path(family: str, dev_class: str, backend: str, prompt: str, seed: int, root: Path = REFS,
                   reference: str = "diffusers") -> Path:
    return reference_dir(family, dev_class, backend, root, reference) / f"{slug(prompt)}-seed{seed}.mp4"


# ----------------------------------------------------------------------------------------------
# weights identity
# ----------------------------------------------------------------------------------------------
HASH_CONTENT_LIMIT = 1 << 30  # hash tensor contents up to 1 GiB of weights (tiny repos); else names/shapes


def weights_identity(repo: Path, label: str | None = None) -> dict:
    """Path, sha256 of the component configs, of the weights (contents when small) and of the tokenizer."""
    import torch
    from safetensors import safe_open

    repo = Path(repo)
    configs = [repo / "model_index.json", *sorted(repo.glob("*/config.json")),
               *sorted(repo.glob("*/scheduler_config.json"))]
    h = hashlib.sha256()
    for p in configs:
        if not p.is_file():
            continue
        # version stamps (_diffusers_version, transformers_version) are not part of the model
        cfg = {k: v for k, v in json.loads(p.read_text()).items()
               if not k.startswith("_") and k != "transformers_version"}
        h.update(str(p.relative_to(repo)).encode())
        h.update(json.dumps(cfg, sort_keys=True).encode())
    # tensors by component and name (not file bytes: sharding and header metadata do not matter)
    weights = sorted(repo.rglob("*.safetensors"))
    total = sum(p.stat().st_size for p in weights)
    by_content = total <= HASH_CONTENT_LIMIT
    entries = []
    for p in weights:
        with safe_open(p, framework="pt") as f:
            for key in f.keys():
                if by_content:
                    t = f.get_tensor(key).contiguous()
                    dtype, shape = str(t.dtype), tuple(t.shape)
                    digest = hashlib.sha256(t.view(-1).view(torch.uint8).numpy()).hexdigest()
                else:
                    info = f.get_slice(key)
                    dtype, shape, digest = info.get_dtype(), tuple(info.get_shape()), ""
                entries.append((p.parent.name, key, dtype, shape, digest))
    w = hashlib.sha256()
    for entry in sorted(entries):
        w.update(repr(entry).encode())
    t = hashlib.sha256()  # the tokenizer decides the token ids, so it is part of the identity
    for p in sorted((repo / "tokenizer").glob("*")):
        if p.is_file():
            t.update(p.name.encode())
            t.update(p.read_bytes())
    return {"path": label or str(repo), "config_sha256": h.hexdigest(), "weights_sha256": w.hexdigest(),
            "tokenizer_sha256": t.hexdigest(),
            "weights_hashed": "tensor contents" if by_content else "tensor names, dtypes and shapes"}


# ----------------------------------------------------------------------------------------------
# frames in and out
# ----------------------------------------------------------------------------------------------
def write_video(frames: np.ndarray, path: Path) -> Path:
    """Lossless H.264 (libx264rgb, qp 0, RGB 4:4:4): decoding gives the frames back bit for bit.
    (The default yuv420p H.264 is far from lossless on tiny frames: SSIM 0.75-0.81 after a round trip.)"""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=REFERENCE_FPS, codec="libx264rgb", pixelformat="rgb24",
                            macro_block_size=1, output_params=["-qp", "0"], ffmpeg_log_level="error") as w:
        for frame in frames:
            w.append_data(frame)
    return path


def read_video(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    try:
        return np.stack(imageio.mimread(path, memtest=False))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the reference video ({e})") from None


def write_reference(frames: np.ndarray, path: Path, meta: dict) -> Path:
    """``.mp4`` (lossless), ``.npz`` (the same uint8 frames: a second, codec-free copy that the suite
    checks the mp4 against) and ``.json`` metadata."""
    write_video(frames, path)
    np.savez_compressed(path.with_suffix(".npz"), frames=frames)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


def list_references(family: str, dev_class: str, backend: str, root: Path = REFS,
                    reference: str = "diffusers") -> list[Path]:
    return sorted(reference_dir(family, dev_class, backend, root, reference).glob("*.mp4"))


# ----------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------
@dataclass
class SSIMResult:
    reference: str
    per_frame: list[float]
    threshold: Threshold
    side_by_side: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_frame))

    @property
    def min(self) -> float:
        return float(np.min(self.per_frame))

    @property
    def worst_frame(self) -> int:
        return int(np.argmin(self.per_frame))

    @property
    def passed(self) -> bool:
        return self.mean >= self.threshold.mean and self.min >= self.threshold.min

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        line = (f"{status} {self.reference}: mean SSIM {self.mean:.4f} (>= {self.threshold.mean}), "
                f"min {self.min:.4f} (>= {self.threshold.min}) at frame {self.worst_frame}")
        if not self.passed:
            line += "\n  per-frame SSIM: " + " ".join(f"{s:.4f}" for s in self.per_frame)
            if self.side_by_side:
                line += f"\n  worst frame side by side (reference | ours | abs diff): {self.side_by_side}"
        return line

    def as_dict(self) -> dict:
        return {"reference": self.reference, "passed": self.passed, "mean": self.mean, "min": self.min,
                "worst_frame": self.worst_frame, "per_frame": self.per_frame, "threshold": asdict(self.threshold),
                "side_by_side": self.side_by_side, "notes": self.notes}


def frame_ssim(reference: np.ndarray, ours: np.ndarray) -> list[float]:
    """Per-frame SSIM of uint8 [F, H, W, 3] videos: skimage structural_similarity with channel_axis=-1
    and data_range=255 (its default 7x7 Gaussian-free window)."""
    from skimage.metrics import structural_similarity

    if reference.shape != ours.shape:
        raise UserError(f"frame shapes differ: reference {list(reference.shape)} vs ours {list(ours.shape)}")
    return [float(structural_similarity(r, o, channel_axis=-1, data_range=DATA_RANGE))
            for r, o in zip(reference, ours)]


def side_by_side(reference: np.ndarray, ours: np.ndarray, path: Path) -> Path:
    """reference | ours | abs diff (amplified x4, clipped) of one frame, as a PNG."""
    import imageio.v2 as imageio

    diff = np.clip(np.abs(reference.astype(np.int16) - ours.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
    sep = np.full((reference.shape[0], 2, 3), 255, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.concatenate([reference, sep, ours, sep, diff], axis=1))
    return path


def compare_videos(reference: np.ndarray, ours: np.ndarray, thr: Threshold, *, name: str = "",
                   failure_dir: Path | None = None) -> SSIMResult:
    result = SSIMResult(name, frame_ssim(reference, ours), thr)
    if not result.passed and failure_dir is not None:
        i = result.worst_frame
        png = Path(failure_dir) / f"{Path(name).stem or 'video'}-frame{i}-ref-ours-diff.png"
        result.side_by_side = str(side_by_side(reference[i], ours[i], png))
    return result


# ----------------------------------------------------------------------------------------------
# rendering: reference (diffusers) and ours (vidport)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderSettings:
    prompt: str
    negative_prompt: str
    seed: int
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float


def default_settings(repo: Path, prompt: str, seed: int, **overrides) -> RenderSettings:
    """The preset's sampling defaults (official facts via the runtime), with overrides."""
    from vidport.families import family_for_pipeline

    fam = family_for_pipeline(json.loads((Path(repo) / "model_index.json").read_text()).get("_class_name"))
    d = fam.load(fam.pipeline).repo_sampling_defaults(Path(repo))
    kw = {k: d[k] for k in ("negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                            "guidance_scale")}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return RenderSettings(prompt=prompt, seed=seed, **kw)


def pipeline_call_settings(repo: Path) -> dict:
    """The runtime's sampling defaults for the repo that the diffusers pipeline it names takes under the same name,
    beyond the render settings (e.g. a VAE decode timestep and decode noise scale): the reference render gets them
    so that it samples as the runtime does, and the metadata records them. Empty when the pipeline takes none."""
    import inspect

    import diffusers

    from vidport.families import family_for_pipeline

    name = _pipeline_class(repo)
    fam = family_for_pipeline(name)
    defaults = fam.load(fam.pipeline).repo_sampling_defaults(Path(repo))
    accepted = inspect.signature(getattr(diffusers, name).__call__).parameters
    given = set(RenderSettings.__dataclass_fields__) | {"prompt", "generator", "output_type"}
    return {k: v for k, v in defaults.items() if k in accepted and k not in given}


def render_reference(repo: Path, s: RenderSettings, *, device: str, dtype: str, backend: str) -> np.ndarray:
    """The diffusers pipeline the repo's model_index.json names (e.g. ``WanPipeline``) -> uint8 [F, H, W, 3],
    rounded as the runtime rounds. The pipeline also gets ``pipeline_call_settings``, and torch's global RNG is
    seeded with the seed for the call (restored afterwards): a model that draws from it (a VAE decoder injecting
    noise) then draws what the runtime, which seeds it so, draws."""
    import torch
    from diffusers import DiffusionPipeline
    from vidport.runtime.loading import quiet_library_loading

    from vidport.dtypes import torch_dtype

    with quiet_library_loading():
        pipe = DiffusionPipeline.from_pretrained(repo, dtype=torch_dtype(dtype))
        pipe.vae.to(torch.float32)  # decode in fp32, as the runtime does
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.set_attention_backend(DIFFUSERS_BACKENDS[backend])
    dev = torch.device(device)
    with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(s.seed)
        video = pipe(s.prompt, negative_prompt=s.negative_prompt, num_frames=s.num_frames, height=s.height,
                     width=s.width, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                     generator=torch.Generator("cpu").manual_seed(s.seed), output_type="np",
                     **pipeline_call_settings(repo)).frames[0]
    return (np.asarray(video, dtype=np.float64) * 255).round().clip(0, 255).astype(np.uint8)


# the runtime's settings that sample as each reference does: as the diffusers pipeline (its sigma grid,
# CPU-generator noise, the residual stream in the compute dtype) or as the official code
DIFFUSERS_COMPATIBLE = {"sampler_grid": "diffusers", "noise": "diffusers", "precision": "fast"}
RUNTIME_MODES = {"diffusers": DIFFUSERS_COMPATIBLE,
                 "official": {"sampler_grid": "official", "noise": "official", "precision": "official"}}


def render_ours(repo: Path, s: RenderSettings, *, device: str, dtype: str, backend: str, generator=None,
                reference: str = "diffusers"):
    """vidport VideoGenerator in the mode matching ``reference`` -> uint8 [F, H, W, 3]. Pass ``generator`` to
    reuse loaded weights."""
    from vidport.runtime.generator import VideoGenerator

    gen = generator or VideoGenerator.from_pretrained(repo, device=device, dtype=dtype, attention_backend=backend,
                                                      **RUNTIME_MODES[reference])
    return gen.generate_video(s.prompt, negative_prompt=s.negative_prompt, num_frames=s.num_frames,
                              height=s.height, width=s.width, num_inference_steps=s.num_inference_steps,
                              guidance_scale=s.guidance_scale, seed=s.seed)


def metadata(repo: Path, s: RenderSettings, *, family: str, device: str, dtype: str, backend: str,
             weights_label: str | None = None) -> dict:
    import diffusers
    import torch

    return {
        **asdict(s), "size": [s.height, s.width], "frames": s.num_frames, "steps": s.num_inference_steps,
        "guidance": s.guidance_scale, "fps": REFERENCE_FPS, "family": family, "dtype": dtype,
        "attention_backend": backend,
        "weights": weights_identity(repo, weights_label),
        "reference_implementation": {"name": f"diffusers.{_pipeline_class(repo)}", "version": diffusers.__version__,
                                     "attention_backend": DIFFUSERS_BACKENDS[backend], **_call_settings(repo)},
        "torch_version": torch.__version__, "device": device, "device_class": device_class(device),
        "device_name": device_name(device),
        "encoding": "H.264 libx264rgb qp=0 (lossless RGB); frames also in the .npz",
        "ssim": {"function": "skimage.metrics.structural_similarity", "channel_axis": -1, "data_range": DATA_RANGE},
    }


def _call_settings(repo: Path) -> dict:
    """The metadata's record of what the reference call got beyond the settings: ``call_settings`` when the pipeline
    takes any of the runtime's other defaults (``pipeline_call_settings``), and the global RNG's seeding."""
    extra = pipeline_call_settings(repo)
    return {**({"call_settings": extra} if extra else {}), "global_rng": "torch.manual_seed(seed) for the call"}


def _pipeline_class(repo: Path) -> str:
    return json.loads((Path(repo) / "model_index.json").read_text())["_class_name"]


def settings_from_metadata(meta: dict) -> RenderSettings:
    return RenderSettings(**{k: meta[k] for k in RenderSettings.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------
# the two commands' work
# ----------------------------------------------------------------------------------------------
def defaults_for(device: str, dtype: str | None, backend: str | None) -> tuple[str, str]:
    """fp32 + sdpa-math on CPU (exact); bf16 + sdpa on CUDA, unless given."""
    cuda = device.startswith("cuda")
    return dtype or ("bf16" if cuda else "fp32"), backend or ("sdpa" if cuda else "sdpa-math")


def generate_references(family: str, repo: Path, *, device: str = "cpu", dtype: str | None = None,
                        backend: str | None = None, prompts: list[tuple[str, int]] | None = None,
                        root: Path = REFS, log=print, weights_label: str | None = None, reference: str = "diffusers",
                        official_root: Path | None = None, **overrides) -> list[Path]:
    """Render references with the diffusers pipeline the repo names (or, ``reference="official"``, with the
    family's official code from the checkout at ``official_root``) and write them under ``root``."""
    dtype, backend = defaults_for(device, dtype, backend)
    from vidport.families import get_family

    fam = get_family(family)
    render_official = _official_renderer(fam, reference, official_root)
    prompts = prompts or list(fam.ssim.prompts)
    if not prompts:
        raise UserError(f"no reference prompts for family {family!r}; pass --prompt")
    dev_class = device_class(device)
    written = []
    for prompt, seed in prompts:
        s = default_settings(repo, prompt, seed, **overrides)
        meta = metadata(repo, s, family=family, device=device, dtype=dtype, backend=backend,
                        weights_label=weights_label)
        if render_official is None:
            frames = render_reference(repo, s, device=device, dtype=dtype, backend=backend)
        else:
            frames, info = render_official(repo, s, official_root=Path(official_root), device=device, dtype=dtype,
                                           backend=backend)
            meta["reference_implementation"] = {**info, "attention_backend": backend}
        path = reference_path(family, dev_class, backend, prompt, seed, root, reference)
        write_reference(frames, path, meta)
        log(f"wrote {path} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, WxH)")
        written.append(path)
    return written


def _official_renderer(fam, reference: str, official_root: Path | None):
    """The family's ``official_render`` for ``reference="official"`` (None for diffusers), or a one-line error."""
    if reference not in REFERENCES:
        raise UserError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    if reference == "diffusers":
        return None
    if not fam.official_render:
        raise UserError(f"{fam.name} declares no official renderer (FamilySpec.official_render); use --reference "
                        "diffusers")
    if official_root is None:
        raise UserError("--reference official needs --official-root PATH: a checkout of the family's official code")
    return fam.load(fam.official_render)


def check_references(family: str, repo: Path, *, device: str = "cpu", dtype: str | None = None,
                     backend: str | None = None, root: Path = REFS, failure_dir: Path | None = None,
                     seed_offset: int = 0, reference: str = "diffusers") -> list[SSIMResult]:
    """Render every reference of (family, device class, backend, reference implementation) with vidport, in
    the runtime mode matching that reference, and compare.

    ``seed_offset`` perturbs our seeds (a run that must fail; used by the suite's negative test).
    """
    from vidport.runtime.generator import VideoGenerator

    if reference not in REFERENCES:
        raise UserError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    dtype, backend = defaults_for(device, dtype, backend)
    dev_class = device_class(device)
    refs = list_references(family, dev_class, backend, root, reference)
    if not refs:
        how = " --reference official --official-root CHECKOUT" if reference == "official" else ""
        raise UserError(f"no references under {reference_dir(family, dev_class, backend, root, reference)}; render "
                        f"them with `port ssim-refs generate {family} --weights REPO --device {device}{how}`")
    thr = threshold(family, dev_class)
    identity = weights_identity(repo)
    gen = VideoGenerator.from_pretrained(repo, device=device, dtype=dtype, attention_backend=backend,
                                         **RUNTIME_MODES[reference])
    results = []
    for ref in refs:
        meta = json.loads(ref.with_suffix(".json").read_text())
        for key in ("config_sha256", "weights_sha256", "tokenizer_sha256"):
            if meta["weights"].get(key) != identity[key]:
                raise UserError(f"{ref}: rendered from other weights ({key} differs from {repo}); pass the weights "
                                f"it names ({meta['weights']['path']}) or regenerate with `port ssim-refs generate`")
        s = settings_from_metadata(meta)
        ours = render_ours(repo, RenderSettings(**{**asdict(s), "seed": s.seed + seed_offset}), device=device,
                           dtype=dtype, backend=backend, generator=gen)
        result = compare_videos(read_video(ref), ours, thr, name=str(ref.relative_to(root)) if
                                ref.is_relative_to(root) else str(ref), failure_dir=failure_dir)
        results.append(result)
    return results
