"""The Diffusers-format tiny Wan repo the parity suite runs on.

Preferred: ``port convert`` of the embedded official tiny release (what users run). Where this checkout
has no ``convert`` command, a stand-in repo is built from the tiny configs with seeded weights, with
the VAE converted from the official tiny file by diffusers' ``convert_wan_vae_to_diffusers``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from vidport.porting.errors import UserError
from vidport.runtime.models.wan import family

ROOT = Path(__file__).resolve().parent.parent
TINY_RELEASE = ROOT / "official_weights" / "wan2.1-t2v-tiny"


def check_repo(repo: Path) -> None:
    """``--weights``: a Diffusers-format repo with sound weight files, or a one-line error (exit 2)."""
    from vidport.porting.sources import check_diffusers_repo

    check_diffusers_repo(repo)


def convert_available() -> bool:
    return importlib.util.find_spec("vidport.porting.commands.convert") is not None


def converted_tiny_repo(out: Path, release: Path = TINY_RELEASE) -> tuple[Path, str]:
    """A tiny Diffusers-format repo at ``out``: (path, how it was made)."""
    out = Path(out)
    if convert_available():
        from click.testing import CliRunner
        from vidport.porting.cli import cli

        args = ["convert", str(release), "--family", family.NAME, "--out", str(out), "--no-progress"]
        result = CliRunner().invoke(cli, args)
        if result.exit_code != 0:
            raise UserError(f"port convert {release} failed: {result.output.strip().splitlines()[-1:]}"
                            f"{result.exception or ''}")
        return out, "port convert"
    return stand_in_tiny_repo(out, release), "stand-in (no port convert in this checkout)"


def stand_in_tiny_repo(out: Path, release: Path = TINY_RELEASE, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
    from vidport.parity.wan import reference_vae

    torch.manual_seed(seed)
    cfg = family.dit_config("tiny")
    transformer = WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    with torch.no_grad():  # default init leaves modulation tables near zero; randomize so no path hides
        for name, p in transformer.named_parameters():
            scale = 0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn_like(p) * scale / max(1, p.shape[-1]) ** 0.5
                    + (1.0 if name.endswith(("norm_q.weight", "norm_k.weight", "norm2.weight")) else 0.0))
    text_encoder = UMT5EncoderModel(UMT5Config(**family.text_encoder_config("tiny")))
    vae_cfg = AutoencoderKLWan(**family.vae_config("tiny")).config
    vae = reference_vae(release / family.OFFICIAL_FILES["vae"], dict(vae_cfg))
    tokenizer = AutoTokenizer.from_pretrained(release / family.OFFICIAL_FILES["tokenizer"])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=family.NUM_TRAIN_TIMESTEPS,
                                        flow_shift=family.SAMPLING["tiny"]["flow_shift"])
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    pipe.save_pretrained(out)
    return Path(out)
