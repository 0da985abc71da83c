"""Configuration of the Wan2.1 text-to-video diffusion transformer (DiT)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WanDiTConfig:
    """Hyper-parameters of the Wan2.1 T2V DiT. Field names follow the official `config.json`."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_len: int = 1024
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axes_dim(self) -> tuple[int, int, int]:
        """Channels of head_dim given to the (frame, height, width) RoPE axes, as the official model."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def replace(self, **changes) -> WanDiTConfig:
        return dataclasses.replace(self, **changes)

    # --- official and Diffusers config.json <-> this dataclass -------------------------------
    def to_official(self) -> dict:
        cfg = {
            "_class_name": "WanModel",
            "_diffusers_version": "0.30.0",
            "dim": self.dim,
            "eps": self.eps,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "in_dim": self.in_dim,
            "model_type": "t2v",
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "out_dim": self.out_dim,
            "text_len": self.text_len,
        }
        if self.text_dim != 4096:  # the official WanModel takes text_dim; real releases leave the default
            cfg["text_dim"] = self.text_dim
        return cfg

    @classmethod
    def from_official(cls, cfg: dict, *, text_dim: int | None = None) -> WanDiTConfig:
        if cfg.get("model_type", "t2v") != "t2v":
            raise ValueError(f"model_type={cfg.get('model_type')!r} is not supported (only 't2v')")
        kw = {k: cfg[k] for k in ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers",
                                  "out_dim", "text_len", "text_dim") if k in cfg}
        if text_dim is not None:
            kw["text_dim"] = text_dim
        return cls(**kw)

    def to_diffusers(self) -> dict:
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
            "eps": self.eps,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": self.rope_max_len,
        }

    @classmethod
    def from_diffusers(cls, cfg: dict, *, text_len: int = 512) -> WanDiTConfig:
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise ValueError("image-conditioned Wan (I2V) transformers are not supported yet; use a T2V model")
        qk = cfg.get("qk_norm", "rms_norm_across_heads")
        if qk not in ("rms_norm_across_heads", None):
            raise ValueError(f"qk_norm={qk!r} is not supported (only 'rms_norm_across_heads')")
        heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
        return cls(
            dim=heads * head_dim,
            ffn_dim=cfg["ffn_dim"],
            num_heads=heads,
            num_layers=cfg["num_layers"],
            freq_dim=cfg.get("freq_dim", 256),
            text_dim=cfg.get("text_dim", 4096),
            text_len=text_len,
            in_dim=cfg.get("in_channels", 16),
            out_dim=cfg.get("out_channels", 16),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
            eps=cfg.get("eps", 1e-6),
            rope_max_len=cfg.get("rope_max_seq_len", 1024),
            qk_norm=qk is not None,
            cross_attn_norm=cfg.get("cross_attn_norm", True),
        )


PRESETS: dict[str, WanDiTConfig] = {
    "1.3b": WanDiTConfig(),
    "14b": WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # A few hundred K parameters: runs in milliseconds on a CPU, exercises every code path
    # (3 RoPE axes with head_dim 16, several blocks, padded text).
    "tiny": WanDiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_dim=32),
}


def preset(name: str) -> WanDiTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown Wan DiT preset {name!r}; choose one of {', '.join(PRESETS)}") from None
