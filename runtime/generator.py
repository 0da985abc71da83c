"""VideoGenerator: a validated model turned into videos.

    from vidport.runtime import VideoGenerator
    gen = VideoGenerator.from_pretrained("converted_weights/wan2.1-t2v-tiny")
    frames = gen.generate_video("a cat walks on the grass", seed=0, output_path="cat.mp4")

``from_pretrained`` takes a Diffusers-format repo (a folder written by ``port convert``, or a hub id
such as ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``), loads the text encoder, VAE and scheduler with
transformers/diffusers and the DiT natively through the strict loader. ``generate_video`` runs the
family's list of stages (``runtime/models/<family>/pipeline.py``) and returns uint8 frames [F, H, W, 3].
"""

from __future__ import annotations

import difflib
import gc
import importlib
import importlib.util
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from vidport.porting.options import NOISE_MODES, PRECISIONS, SAMPLER_GRIDS
from vidport.runtime.pipeline import CFGStrategy, PipelineState, get_cfg_strategy, run_stages, validate_request
from vidport.runtime.pipeline.validate import validate_output_path
from vidport.runtime.vae_tiling import check_option as check_tiling_option

from vidport.devices import default_device
from vidport.errors import UserError
from vidport.families import FamilySpec, family_for_pipeline

RUNTIME_DTYPES = ("fp32", "bf16")  # compute dtypes the runtime supports (vidport.dtypes spells them)
# the native DiT's bf16 recipe unless precision= says: official costs 0.9% of the 1.3B forward on an H200 and cuts
# its error vs fp32 from 1.5e-2 to 2.9e-3 rel L2 (BENCHMARKS.md "bf16 recipes"), under the 3% bar for a default
DEFAULT_PRECISION = "official"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class GenerationReport:
    """What the last ``generate_video`` call did: the settings used, timings in seconds, the mp4 path."""

    settings: dict
    timings: dict[str, float]
    step_seconds: list[float]
    output_path: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"output": self.output_path, "settings": self.settings, "timings_s": self.timings,
                "denoise_step_s": self.step_seconds, **self.extra}


class VideoGenerator:
    """Runs a family pipeline on loaded components. Build it with ``from_pretrained``.

    ``cfg`` picks the classifier-free-guidance strategy (``"serial"``, ``"batched"``, or a strategy
    object such as runtime.parallel's CFG-parallel one; None: the family pipeline's ``DEFAULT_CFG``, else serial);
    ``components.transformer`` may be any module with the family's DiT forward signature (e.g. a sequence-parallel or
    CUDA-graph wrapper of the native DiT): the family's pipeline stages are what call it.
    """

    def __init__(self, components, pipeline_module, *, family: FamilySpec, cfg: str | CFGStrategy | None = None,
                 source: str = "", load_seconds: float = 0.0):
        self.components = components
        self.pipeline = pipeline_module
        self.family = family
        self.cfg = get_cfg_strategy(cfg if cfg is not None else getattr(pipeline_module, "DEFAULT_CFG", "serial"))
        self.source = source
        self.load_seconds = load_seconds
        self.defaults = pipeline_module.sampling_defaults(components.dit_config)
        self.last_report: GenerationReport | None = None
        self.last_state: PipelineState | None = None  # the last run's stage outputs (latents, noise, ...)
        self.closed = False
        # stage name -> a wrapper of that stage (a multi-GPU rank's "encode": rank 0 encodes, the others receive)
        self.stage_wrappers: dict[str, Callable] = {}

    def close(self) -> None:
        """Drop the models and the last run's tensors (on CUDA, hand the cached memory back). Idempotent;
        ``generate_video`` afterwards is an error. ``with VideoGenerator.from_pretrained(...) as gen:``
        closes on leaving the block, as the multi-GPU generator does."""
        if self.closed:
            return
        device = self.components.device
        self.components = None
        self.last_state = None
        self.closed = True
        if device.type == "cuda":
            gc.collect()  # modules in reference cycles would keep their memory until the next collection
            torch.cuda.empty_cache()

    def __enter__(self) -> VideoGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, *, num_gpus: int = 1,
                        attention_backend: str | None = None, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, cfg: str | CFGStrategy | None = None,
                        scheduler: str | None = None, flow_shift: float | None = None,
                        sampler_grid: str | None = None, noise: str = "diffusers", precision: str | None = None,
                        compile: bool = False, cuda_graph: bool = False, vae_tiling: bool | None = None,
                        text_encoder: bool = True, **parallel_options) -> VideoGenerator:
        """Load a Diffusers-format repo (folder or hub id).

        Fidelity to the official release (docs/generate.md): ``sampler_grid`` "official" (the official
        sampler's sigmas and timesteps, whatever diffusers is installed) or "diffusers" (the installed
        diffusers scheduler's own grid; what diffusers' pipeline samples); None = the family's choice
        (official for its official sampler). ``noise`` "diffusers" (default: a CPU generator, the same noise
        on every device, as ``WanPipeline(generator=torch.Generator("cpu").manual_seed(seed))``) or
        "official" (drawn on a generator on the device, as the official sampler does: reproduces its video
        on a GPU). ``precision`` "fast" or "official" (bf16 only: the residual stream, norms and head in
        fp32 as the official autocast run keeps them; default ``DEFAULT_PRECISION``).

        ``dtype``: "bf16" or "fp32" for the DiT and text encoder (default bf16 on CUDA, fp32 on CPU; the
        VAE always decodes in fp32). ``attention_backend``: a name from ``runtime.attention`` (default:
        the best for the device). ``scheduler``: None = as configured in ``scheduler/``, or "unipc" /
        "euler"; ``flow_shift`` overrides the configured shift. ``compile``: ``torch.compile`` each DiT
        block (in place; the first steps pay the compile time). ``cuda_graph``: replay each DiT forward
        as one CUDA graph (``runtime.cuda_graph``; CUDA only, one GPU; the first step captures it).
        ``vae_tiling``: decode the video in overlapping spatial tiles (``runtime.vae_tiling``; on several GPUs the ranks
        share the tiles): None (auto: tiled for frames larger than 480x832, whatever the number of GPUs), True or
        False. A family
        whose decoder cannot be tiled (its pipeline module's ``TILED_DECODE`` is not True) never tiles, and
        ``vae_tiling=True`` on it is a one-line error.

        ``text_encoder=False`` loads no text encoder: the generator cannot encode a prompt itself (what a multi-GPU
        rank other than 0 does; rank 0 sends it the encoding, ``runtime.parallel.generator``).

        ``num_gpus > 1`` delegates to ``runtime.parallel.launch.from_pretrained(path_or_hub_id,
        num_gpus=..., attention_backend=..., dtype=..., device=..., cfg=..., scheduler=...,
        flow_shift=..., **parallel_options)``, which returns an object with the same
        ``generate_video`` and ``last_report``; without that module it is a one-line error.
        """
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
            raise UserError(f"num_gpus={num_gpus!r} must be an integer >= 1")
        if cuda_graph and num_gpus > 1:
            raise UserError(f"cuda_graph runs on one GPU; use num_gpus=1 or drop cuda_graph (num_gpus={num_gpus})")
        check_tiling_option(vae_tiling)
        if num_gpus > 1:
            return _launcher(num_gpus).from_pretrained(
                path_or_hub_id, num_gpus=num_gpus, attention_backend=attention_backend, dtype=dtype, device=device,
                cfg=cfg, scheduler=scheduler, flow_shift=flow_shift, sampler_grid=sampler_grid, noise=noise,
                precision=precision, compile=compile, vae_tiling=vae_tiling, **parallel_options)
        if parallel_options:
            raise UserError(f"unknown option(s) for num_gpus=1: {', '.join(sorted(parallel_options))}")
        precision = _check_fidelity_options(sampler_grid, noise, precision)

        start = time.perf_counter()
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        if cuda_graph and device.type != "cuda":
            raise UserError(f"cuda_graph needs a CUDA device, not {device}; drop cuda_graph (--cuda-graph) there")
        folder = resolve_repo(path_or_hub_id)
        family = family_of_repo(folder)
        module = family.load(family.pipeline)
        tiling = check_vae_tiling(vae_tiling, family, module)
        backends = _resolve_backends(attention_backend, device, torch_dtype,
                                     transformer_setting(folder, "attention_head_dim"))
        components = module.load_components(folder, dtype=torch_dtype, device=device, scheduler=scheduler,
                                            flow_shift=flow_shift, sampler_grid=sampler_grid, noise=noise,
                                            precision=precision, text_encoder=text_encoder, **tiling)
        components.transformer.set_attention_backend(*backends)
        _accelerate(components, compile=compile, cuda_graph=cuda_graph)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return cls(components, module, family=family, cfg=cfg, source=str(path_or_hub_id),
                   load_seconds=time.perf_counter() - start)

    # --- generation ---------------------------------------------------------------------------
    def generate_video(self, prompt: str, *, negative_prompt: str | None = None, num_frames: int | None = None,
                       height: int | None = None, width: int | None = None,
                       num_inference_steps: int | None = None, guidance_scale: float | None = None,
                       seed: int | None = None, output_path: str | os.PathLike | None = None,
                       on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Generate one video; returns uint8 frames [F, H, W, 3] and writes an mp4 if ``output_path``.

        Unset arguments take the model preset's defaults (``self.defaults``; official release facts).
        ``negative_prompt=None`` uses the official negative prompt (what the official sampler does for its
        default ``n_prompt=""``); ``""`` here means the empty text is the negative prompt, which the official
        sampler cannot do (its "" means its default). ``seed=None`` draws a random seed (reported in
        ``last_report.settings``). With ``noise="diffusers"`` the same seed gives the same initial noise as
        diffusers' ``WanPipeline(generator=torch.Generator("cpu").manual_seed(seed))``; with "official", as
        the official sampler's ``seed``.
        ``on_step(i, num_steps)`` is called after each denoising step.
        """
        if self.closed:
            raise UserError(f"this VideoGenerator ({self.source}) is closed; "
                            "load the model again with VideoGenerator.from_pretrained")
        d = self.defaults
        request = validate_request(
            prompt, d["negative_prompt"] if negative_prompt is None else negative_prompt,
            num_frames=d["num_frames"] if num_frames is None else num_frames,
            height=d["height"] if height is None else height,
            width=d["width"] if width is None else width,
            num_inference_steps=d["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            guidance_scale=d["guidance_scale"] if guidance_scale is None else guidance_scale,
            seed=random.randrange(2**31) if seed is None else seed, geometry=self.family.geometry)
        out = None if output_path is None else validate_output_path(output_path)

        c = self.components
        if getattr(c, "text_encoder", True) is None and "encode" not in self.stage_wrappers:
            raise UserError(f"this VideoGenerator ({self.source}) was loaded with text_encoder=False and cannot encode "
                            f"a prompt; load it without text_encoder=False")
        stages = [self.stage_wrappers.get(stage.name, _same)(stage)
                  for stage in self.pipeline.t2v_stages(c, cfg=self.cfg, on_step=on_step)]
        state = run_stages(stages, PipelineState(request=request, device=c.device))
        timings = {"load": self.load_seconds, **state.timings}
        if out is not None:
            from vidport.runtime.video import write_mp4

            start = time.perf_counter()
            write_mp4(state.frames, out, fps=d["fps"])
            timings["write"] = time.perf_counter() - start
        settings = {k: getattr(request, k) for k in ("prompt", "negative_prompt", "num_frames", "height", "width",
                                                     "num_inference_steps", "guidance_scale", "seed")}
        settings.update(model=self.source, preset=c.preset, dtype=str(c.dtype).replace("torch.", ""),
                        device=str(c.device), cfg=self.cfg.name, scheduler=type(c.scheduler).__name__,
                        sampler_grid=getattr(c, "sampler_grid", None), noise=getattr(c, "noise", None),
                        precision=getattr(_unwrapped(c.transformer), "precision", None), fps=d["fps"],
                        vae_tiling=bool(state.info.get("vae_tiling", False)))
        for key in ("vae_tiles", "vae_split"):  # what the decode did: its tiles, or the ranks that split its rows
            if key in state.info:
                settings[key] = state.info[key]
        extra = {"peak_gib_after": state.info["peak_gib_after"]} if "peak_gib_after" in state.info else {}
        self.last_report = GenerationReport(settings=settings, timings=timings, step_seconds=state.step_seconds,
                                            output_path=None if out is None else str(out), extra=extra)
        self.last_state = state
        return state.frames


def _same(stage):
    return stage


# --- resolving the arguments ---------------------------------------------------------------------
def _choice(name: str, value, allowed: tuple[str, ...], none_ok: bool = False) -> None:
    if not (value is None and none_ok) and value not in allowed:
        raise UserError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _unwrapped(model):
    """The model inside a CUDA-graph or sequence-parallel wrapper (``.module`` / ``.dit``), for its settings."""
    for attr in ("module", "dit"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            return _unwrapped(inner)
    return model


def _check_fidelity_options(sampler_grid, noise, precision) -> str:
    """One-line errors for unknown choices; the precision, defaulted."""
    _choice("sampler_grid", sampler_grid, SAMPLER_GRIDS, none_ok=True)
    _choice("noise", noise, NOISE_MODES)
    precision = precision or DEFAULT_PRECISION
    _choice("precision", precision, PRECISIONS)
    return precision


def check_vae_tiling(vae_tiling: bool | None, family: FamilySpec, module) -> dict:
    """The keyword arguments that pass ``vae_tiling`` to the family's ``load_components``: none for a family whose
    pipeline module does not declare ``TILED_DECODE = True`` (it never tiles), where ``vae_tiling=True`` is one line."""
    if getattr(module, "TILED_DECODE", False) is True:
        return {"vae_tiling": vae_tiling}
    if vae_tiling:
        raise UserError(f"vae_tiling=True is not supported by {family.name}: its VAE decode cannot be split into tiles "
                        f"({module.__name__}.TILED_DECODE says why); use vae_tiling=False or None")
    return {}


def _launcher(num_gpus: int):
    launch = parallel_launcher()
    if launch is None:
        raise UserError(f"num_gpus={num_gpus} needs runtime.parallel.launch (multi-GPU generation), "
                        "which this installation lacks; use num_gpus=1")
    return launch


def _accelerate(components, *, compile: bool, cuda_graph: bool) -> None:
    """``compile``: torch.compile each DiT block in place (parameter names and hooks stay as they are);
    ``cuda_graph``: replay each DiT forward as one CUDA graph."""
    if compile:
        for block in getattr(components.transformer, "blocks", [components.transformer]):
            block.compile(dynamic=False)
    if cuda_graph:
        from vidport.runtime.cuda_graph import CUDAGraphed

        components.transformer = CUDAGraphed(components.transformer)


def parallel_launcher():
    """``runtime.parallel.launch`` if this installation has it (multi-GPU generation), else None."""
    if importlib.util.find_spec("vidport.runtime.parallel") is None or \
            importlib.util.find_spec("vidport.runtime.parallel.launch") is None:
        return None
    return importlib.import_module("vidport.runtime.parallel.launch")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"device {device!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available here; use device='cpu'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow and gain nothing here)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    from vidport.dtypes import short_name, torch_dtype

    try:
        name = short_name(dtype) if isinstance(dtype, torch.dtype) else short_name(torch_dtype(dtype))
    except (KeyError, TypeError):
        name = None
    if name not in RUNTIME_DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; choose bf16 or fp32")
    return torch_dtype(name)


def transformer_setting(folder, key: str) -> int | None:
    """An integer setting of the repo's ``transformer/config.json`` (Diffusers layout: ``num_attention_heads``,
    ``attention_head_dim``), or None when the file or the key is not there (the loader then says what is wrong)."""
    from vidport.runtime.loading import read_diffusers_config

    try:
        return int(read_diffusers_config(Path(folder) / "transformer")[key])
    except (UserError, KeyError, TypeError, ValueError):
        return None


def _resolve_backends(name: str | None, device: torch.device, dtype: torch.dtype | None = None,
                      head_dim: int | None = None) -> tuple[str, str]:
    from vidport.runtime.attention import resolve_backends

    try:  # auto depends on the dtype (no fp32 cuDNN kernel), the attention's shape (self or cross), the head size
        return resolve_backends(name, device, dtype, head_dim=head_dim)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from None


def resolve_repo(path_or_hub_id: str | os.PathLike) -> Path:
    """A local Diffusers-format folder as is; a hub id (owner/name) downloaded with huggingface_hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            hint = " (an official release: run `port convert` first)" if (path / "config.json").is_file() else ""
            raise UserError(f"{path}: no model_index.json; expected a Diffusers-format repo folder{hint}")
        return path
    spec = str(path_or_hub_id)
    if _names_local_folder(spec):
        raise UserError(_missing_folder(spec, "; pass a Diffusers-format repo folder (e.g. written by `port convert`)"))
    if not HUB_ID.match(spec):
        raise UserError(_missing_folder(spec, " (and not a hub id of the form owner/name)"))
    return download(spec)


def _names_local_folder(spec: str) -> bool:
    """A spec that can only mean a local path: explicitly (./, ../, /, ~) or because its first folder exists
    here (a typo in converted_weights/<name> is a missing folder, not a hub download)."""
    if spec.startswith((".", "/", "~")):
        return True
    first = Path(spec).parts[:1]
    return bool(first) and Path(first[0]).is_dir()


def _missing_folder(spec: str, otherwise: str) -> str:
    """'no such folder', with the nearest name beside the first missing part of the path (else ``otherwise``)."""
    parts = Path(spec).expanduser().parts
    i = next(i for i in range(1, len(parts) + 1) if not Path(*parts[:i]).exists())
    parent = Path(*parts[:i - 1]) if i > 1 else Path(".")
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        siblings = []
    close = difflib.get_close_matches(parts[i - 1], siblings, n=1)
    if close:
        return f"{spec}: no such folder; did you mean {Path(*parts[:i - 1], close[0], *parts[i:])}?"
    return f"{spec}: no such folder{otherwise}"


HUB_FILES = ["model_index.json", "*/*.json", "*/*.safetensors", "tokenizer/*", "*/*.model"]


def download(repo_id: str) -> Path:
    from huggingface_hub import errors as hub
    from huggingface_hub import snapshot_download
    from vidport.porting.sources import HubUnreachable, hub_repo_files

    try:
        hub_repo_files(repo_id)  # one quick request: offline fails in a second, not after minutes of retries
    except HubUnreachable as e:
        cached = _cached_snapshot(repo_id)
        if cached is None:
            fetch = (f"set HF_HUB_OFFLINE=0 when online (or pre-download it with `hf download {repo_id}`)"
                     if e.offline else f"pre-download it with `hf download {repo_id}` on a connected machine")
            raise UserError(f"cannot download {repo_id}: {e.reason}, and it is not in the local cache; {fetch}, "
                            "or pass a local Diffusers-format folder (e.g. written by `port convert`)") from None
        return cached
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled):
        reason = "offline or hub unreachable, and not in the local cache"
    except hub.GatedRepoError:
        reason = "gated repo: accept its license on the hub, then `hf auth login`"
    except hub.RepositoryNotFoundError:
        reason = "no such repo on the hub, or it is private"
    except hub.HfHubHTTPError as e:
        reason = f"HTTP {getattr(getattr(e, 'response', None), 'status_code', '?')}"
    except OSError as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UserError(f"cannot download {repo_id} from the Hugging Face hub ({reason}); pass a local "
                    "Diffusers-format folder, or run `port convert` on an official release")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The repo from the local Hugging Face cache (downloaded before, e.g. with `hf download`), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or cached incompletely: either way not usable
        return None


def family_of_repo(folder: Path) -> FamilySpec:
    """The family serving the pipeline class the repo's ``model_index.json`` names."""
    index = Path(folder) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{index}: cannot read ({e})") from None
    return family_for_pipeline(name, where=str(index))
