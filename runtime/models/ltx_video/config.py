"""Configuration of the LTX-Video diffusion transformer (DiT).

Field names follow the transformer's ``config.json`` (the Diffusers repo ``Lightricks/LTX-Video``; the official
release's transformer config uses the same names). Facts that Diffusers' ``LTXVideoTransformer3DModel`` hardcodes
rather than reads from its config are the module constants below; the model reads them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Hardcoded in diffusers' transformer_ltx.py (and the official Transformer3DModel's defaults): not config fields.
TIME_FREQ_DIM = 256  # sinusoidal timestep features (PixArt-alpha's adaLN-single)
FFN_MULT = 4  # feed-forward hidden size = FFN_MULT * dim
QK_NORM_EPS = 1e-5  # RMSNorm of q and k across heads
OUT_NORM_EPS = 1e-6  # the final LayerNorm (no affine)
ROPE_THETA = 10000.0
ROPE_BASE = (20, 2048, 2048)  # (frames, height, width) that the fractional RoPE positions are divided by

# The variants Diffusers' config can name that the native model does not implement: key -> the only value
# it accepts (every released LTX-Video transformer uses these).
FIXED_DIFFUSERS_FIELDS = {
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "attention_bias": True,
    "attention_out_bias": True,
}


@dataclass(frozen=True)
class LTXDiTConfig:
    """Hyper-parameters of the LTX-Video DiT. The defaults are the released 2B transformer (v0.9 and v0.9.1
    share it). ``in_channels`` counts a token's features (the latent channels times the patch volume)."""

    in_channels: int = 128
    out_channels: int = 128
    patch_size: int = 1
    patch_size_t: int = 1
    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 28
    caption_channels: int = 4096
    norm_eps: float = 1e-6  # the blocks' RMSNorms (no affine)

    def __post_init__(self) -> None:
        if self.dim % 2 or self.dim < 6:
            raise ValueError(f"dim={self.dim} (num_attention_heads * attention_head_dim) must be even and at "
                             f"least 6 for the 3-axis RoPE")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def replace(self, **changes) -> LTXDiTConfig:
        return dataclasses.replace(self, **changes)

    # --- Diffusers config.json <-> this dataclass ------------------------------------------------
    def to_diffusers(self) -> dict:
        return {
            "_class_name": "LTXVideoTransformer3DModel",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "patch_size": self.patch_size,
            "patch_size_t": self.patch_size_t,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            # the caption projection maps the text to dim, which the cross-attention's k/v read
            "cross_attention_dim": self.dim,
            "num_layers": self.num_layers,
            "norm_eps": self.norm_eps,
            "caption_channels": self.caption_channels,
            **FIXED_DIFFUSERS_FIELDS,
        }

    @classmethod
    def from_diffusers(cls, cfg: dict) -> LTXDiTConfig:
        """A Diffusers ``LTXVideoTransformer3DModel`` config (missing keys take Diffusers' defaults, which are
        the 2B model's). A variant the native model does not implement is a ValueError naming the key."""
        for key, value in FIXED_DIFFUSERS_FIELDS.items():
            if cfg.get(key, value) != value:
                raise ValueError(f"{key}={cfg[key]!r} is not supported (only {value!r})")
        base = cls()
        kw = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if cfg.get(f.name) is not None}
        kw.setdefault("out_channels", kw.get("in_channels", base.in_channels))  # Diffusers: out_channels or in
        out = cls(**kw)
        cross = cfg.get("cross_attention_dim", out.dim)
        if cross != out.dim:
            raise ValueError(f"cross_attention_dim={cross} must equal num_attention_heads * attention_head_dim = "
                             f"{out.dim} (the caption projection's output is what the cross-attention reads)")
        return out


PRESETS: dict[str, LTXDiTConfig] = {
    # LTX-Video 2B v0.9.1 (= diffusers' LTXVideoTransformer3DModel defaults, Lightricks/LTX-Video transformer/)
    "2b": LTXDiTConfig(),
    # A few tens of K parameters: milliseconds on a CPU, every code path (dim 32 is not a multiple of 6, so the
    # RoPE's padding channels are exercised, as at the real dim 2048; 4 heads; 2 blocks).
    "tiny": LTXDiTConfig(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=8, num_layers=2,
                         caption_channels=24),
}


def preset(name: str) -> LTXDiTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown LTX-Video DiT preset {name!r}; choose one of {', '.join(PRESETS)}") from None
