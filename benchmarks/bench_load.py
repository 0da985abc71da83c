"""Model load time: a Diffusers-format transformer folder -> GPU, vidport's strict loader vs diffusers.

    python benchmarks/bench_load.py            # Wan 1.3B transformer, bf16 safetensors written once to a temp dir

vidport: ``runtime.loading.load_transformer`` (mmap'd safetensors, tensor by tensor, through the name map,
straight to the device, no random init). diffusers: ``WanTransformer3DModel.from_pretrained(torch_dtype=bf16)
.to("cuda")``. Each is timed twice: the first run after the other's (page cache warm for both). Before the
table, the two loaded models run one small forward on the same input (8x16x16 latent, 512 text tokens) and
must agree (rel L2 under --tolerance): a loader that is fast because it loads the wrong bytes fails here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidport.runtime.models.wan.config import preset  # noqa: E402

from benchmarks.common import compare, diffusers_wan, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tolerance", type=float, default=2e-2, help="max rel L2, vidport vs diffusers output (bf16)")
    args = ap.parse_args()
    from diffusers import WanTransformer3DModel
    from vidport.runtime.loading import load_transformer

    cfg = preset(args.preset)
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        diffusers_wan(cfg, device="cpu", dtype=torch.bfloat16).save_pretrained(folder)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        def ours():
            return load_transformer(folder, "wan2.1-t2v", dtype=torch.bfloat16, device=dev)

        def theirs():
            return WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).to(dev)

        # the loaded weights are the saved ones: both models give the same output
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, cfg.in_dim, 2, 16, 16, generator=g).to(dev, torch.bfloat16)
        t = torch.tensor([500.0], device=dev)
        ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, torch.bfloat16)
        with torch.no_grad():
            y_ref = theirs()(x, t, ctx, return_dict=False)[0].float()
            y_ours = ours()(x, t, ctx).float()
        check = compare(y_ours, y_ref)
        print(f"vidport-loaded vs diffusers-loaded model output: rel L2 {check['rel_l2']:.3e}", flush=True)
        if not check["rel_l2"] <= args.tolerance:
            raise SystemExit(f"the models loaded by vidport and diffusers differ (rel L2 {check['rel_l2']:.3e} > "
                             f"{args.tolerance}); no timing")
        del y_ref, y_ours

        times = {"vidport load_transformer": [], "diffusers from_pretrained + .to": []}
        for _ in range(2):
            for name, fn in (("diffusers from_pretrained + .to", theirs), ("vidport load_transformer", ours)):
                sync()
                start = time.perf_counter()
                model = fn()
                sync()
                times[name].append(time.perf_counter() - start)
                del model
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    base = min(times["diffusers from_pretrained + .to"])
    rows = [[k, f"{min(v):.2f}", f"{min(v) / base:.3f}x"] for k, v in times.items()]
    print(f"# {size:.2f} GiB bf16 safetensors -> {dev}")
    print(table(rows, ["loader", "seconds (best of 2)", "ratio vs diffusers"]))


if __name__ == "__main__":
    main()
