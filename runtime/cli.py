"""`port generate`: a video from a validated model, with a progress bar and a timing breakdown."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
from vidport.porting.options import (
    backend_option,
    deprecated_alias,
    device_option,
    dtype_option,
    json_option,
    noise_option,
    precision_option,
    prefer,
    progress_option,
    sampler_grid_option,
    show_progress,
    vae_tiling_option,
)

from vidport.errors import UserError

DEFAULT_OUTPUT_DIR = Path("out")


@click.command("generate")
@click.argument("model")
@click.option("--prompt", required=True, help="What the video shows.")
@click.option("--negative-prompt", default=None,
              help="What to steer away from [default: the official one]. An empty value means no negative "
                   "text (in the official sampler an empty one means its default).")
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False), default=None,
              help="mp4 to write; its folder must exist [default: out/<model>-seed<seed>.mp4].")
@deprecated_alias("--output", "output_deprecated", type=click.Path(dir_okay=False))
@click.option("--num-frames", type=int, default=None, help="4k+1 frames [default: the model preset's].")
@click.option("--height", type=int, default=None, help="Multiple of 16 [default: the model preset's].")
@click.option("--width", type=int, default=None, help="Multiple of 16 [default: the model preset's].")
@click.option("--steps", type=int, default=None, help="Denoising steps [default: the model preset's].")
@click.option("--guidance", type=float, default=None, help="CFG scale; 1 disables guidance [default: preset's].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same video (diffusers' noise).")
@click.option("--num-gpus", type=int, default=1, show_default=True, help="GPUs (sequence parallelism).")
@backend_option()
@dtype_option("auto")
@device_option("auto")
@click.option("--scheduler", type=click.Choice(["unipc", "euler"]), default=None,
              help="Sampler: unipc (flow-matching UniPC) or euler (flow-matching Euler) [default: as configured "
                   "in the repo's scheduler/].")
@click.option("--flow-shift", type=float, default=None, help="Override the scheduler's flow shift.")
@sampler_grid_option()
@noise_option()
@precision_option()
@click.option("--cfg", "cfg", type=click.Choice(["serial", "batched"]), default=None,
              help="How the two guidance branches run: one forward each, or both in one batch [default: the "
                   "family's choice, `port info`].")
@click.option("--cfg-parallel", is_flag=True,
              help="With --num-gpus N (even): the two guidance branches on two halves of the GPUs.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the DiT blocks (first steps pay for it).")
@click.option("--cuda-graph", is_flag=True,
              help="Replay each DiT forward as one CUDA graph (one GPU; the first step captures it).")
@vae_tiling_option()
@progress_option()
@json_option("the result and timings")
def generate(model, prompt, negative_prompt, output, output_deprecated, num_frames, height, width, steps, guidance,
             seed, num_gpus, attention_backend, dtype, device, scheduler, flow_shift, sampler_grid, noise, precision,
             cfg, cfg_parallel, compile_, cuda_graph, vae_tiling, progress, as_json):
    """Generate a video with MODEL: a Diffusers-format folder (e.g. written by `port convert`) or a
    hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers."""
    from vidport.runtime.pipeline.validate import validate_output_path, validate_request

    output = prefer(output, output_deprecated, new="--out", old="--output")
    dtype = None if dtype == "auto" else dtype
    device = None if device == "auto" else device
    attention_backend = None if attention_backend == "auto" else attention_backend

    # explicit values are checked before minutes of loading (unset ones take the model's defaults later),
    # against the family's geometry when the local repo names its pipeline
    geometry = _local_geometry(model)
    fits = geometry.spatial_multiple if geometry else 1
    validate_request(prompt, negative_prompt, num_frames=1 if num_frames is None else num_frames,
                     height=fits if height is None else height, width=fits if width is None else width,
                     num_inference_steps=1 if steps is None else steps,
                     guidance_scale=1.0 if guidance is None else guidance, seed=seed, geometry=geometry)

    if negative_prompt == "":
        click.echo("note: --negative-prompt '' encodes the empty text as the negative prompt; the official sampler "
                   "uses its default negative prompt for an empty one (omit --negative-prompt for that)", err=True)
    if output is None:
        name = re.sub(r"[^\w.-]+", "-", Path(model.rstrip("/")).name) or "video"
        DEFAULT_OUTPUT_DIR.mkdir(exist_ok=True)
        output = DEFAULT_OUTPUT_DIR / f"{name}-seed{seed}.mp4"
    validate_output_path(output)  # fail before minutes of loading, not after

    _quiet_library_progress_bars()
    from tqdm import tqdm
    from vidport.runtime.generator import VideoGenerator

    if cfg_parallel and num_gpus < 2:
        raise UserError("--cfg-parallel needs --num-gpus 2 or more (an even number)")
    parallel = {"cfg_parallel": True} if cfg_parallel else {}
    gen = VideoGenerator.from_pretrained(model, num_gpus=num_gpus, attention_backend=attention_backend,
                                         dtype=dtype, device=device, cfg=cfg, scheduler=scheduler,
                                         flow_shift=flow_shift, sampler_grid=sampler_grid, noise=noise,
                                         precision=precision, compile=compile_, cuda_graph=cuda_graph,
                                         vae_tiling=vae_tiling, **parallel)
    total = steps if steps is not None else gen.defaults["num_inference_steps"]
    try:
        with tqdm(total=total, desc="denoise", unit="step", file=sys.stderr, leave=False,
                  disable=not show_progress(progress)) as bar:
            gen.generate_video(prompt, negative_prompt=negative_prompt, num_frames=num_frames, height=height,
                               width=width, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                               output_path=output, on_step=lambda i, n: bar.update(1))
    finally:
        if hasattr(gen, "close"):  # a multi-GPU generator holds worker processes
            gen.close()
    if gen.last_report is not None:  # None on a torchrun rank other than 0: rank 0 reports
        _print_report(gen.last_report.as_dict(), as_json)


def _print_report(report: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    s = report["settings"]
    tiles = f"; VAE decoded in {s['vae_tiles']} tiles" if s.get("vae_tiling") and s.get("vae_tiles", 1) > 1 else ""
    ranks = "GPUs" if str(s.get("device", "")).startswith("cuda") else "ranks"
    tiles += f"; VAE decode split over {s['vae_split']} {ranks}" if s.get("vae_split") else ""
    click.echo(f"wrote {report['output']}  ({s['num_frames']} frames {s['width']}x{s['height']}, "
               f"{s['num_inference_steps']} steps, guidance {s['guidance_scale']:g}, seed {s['seed']}, "
               f"{s['dtype']} on {s['device']}; {s.get('sampler_grid')} grid, {s.get('noise')} noise{tiles})")
    click.echo(format_timings(report["timings_s"], report["denoise_step_s"]))
    if report.get("load_s"):  # a multi-GPU load, as rank 0 saw it
        click.echo("load: " + " | ".join(f"{k.replace('_', ' ')} {v:.2f}s" for k, v in report["load_s"].items()))


def _local_geometry(model: str):
    """The request geometry of the family serving a local repo's pipeline (no torch needed), else None."""
    from vidport.families import family_for_pipeline

    try:
        name = json.loads((Path(model) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # a hub id, or not a repo: checked after loading
    return family_for_pipeline(name, where=f"{model}/model_index.json").geometry


def format_timings(timings: dict[str, float], steps: list[float]) -> str:
    """One line: load, encode, denoise (per step), decode, write, total."""
    parts = []
    for name in ("load", "encode", "denoise", "decode", "write"):
        if name in timings:
            text = f"{name} {timings[name]:.2f}s"
            if name == "denoise" and steps:
                text += f" ({len(steps)} steps, {sum(steps) / len(steps):.3f} s/step)"
            parts.append(text)
    parts.append(f"total {sum(timings.values()):.2f}s")
    return "timings: " + " | ".join(parts)


def _quiet_library_progress_bars() -> None:
    """transformers/diffusers draw their own bars while loading; ours is the one that matters."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
        dlog.disable_progress_bar()
    except ImportError:
        pass
