"""Benchmark `port convert` on a synthetic official release at the real Wan2.1 1.3B shapes.

    python benchmarks/bench_convert.py [--workdir /tmp] [--dtype keep] [--rounds 6] [--keep-files] [--release DIR]
    python benchmarks/bench_convert.py --real-size --cases first,before --before /tmp/old-vidport --rounds 4

Writes (once) a 5.7 GB fp32 DiT safetensors with the 825 keys and shapes of the real
Wan2.1-T2V-1.3B release (runtime/models/wan/reference/official_dit_1.3b_keys.txt, random data) plus
the official 1.3B config.json; the VAE, umT5 and tokenizer are the tiny ones of the embedded release
(the DiT is what is big). ``--real-size`` writes every component at its real size instead
(``runtime.models.wan.tiny_release --real-size``: also the 0.5 GB VAE and the 11 GB umT5-xxl pickle,
about 17 GB in all; for a machine with the disk for it). Then, on the same disk:

- `cp` of the release's weight files followed by `sync` of the copies (fsync'd, as `port convert`
  fsyncs its output);
- `port convert` in a child process: wall time (imports, planning, the strict check against the
  target layout, SHA-256 of the sources, all included), the transformer component's own seconds, and
  the child's peak RSS (its VmHWM at exit).
cp and convert alternate for --rounds rounds, with `sync` between runs. The conversions cycle through
--cases, each with the vidport cache (``VIDPORT_CACHE_DIR`` in the work folder) as a user has it:

- "first": the cache emptied, default ``--targets auto``: the release's configs are the published ones,
  so the target layout comes from the family's shipped layouts (no diffusers/transformers import): a
  user's first conversion of a Wan2.1 release;
- "libraries-cold": the cache emptied, ``--targets libraries``: the target models are built, importing
  diffusers and transformers: a first conversion of a config vidport does not ship (or a user asking
  for the libraries' check);
- "libraries-memo": ``--targets libraries`` again, the target side memoised by the previous run;
- "before": the `port convert` of another vidport checkout (``--before DIR``, e.g. a ``git worktree``
  of an older commit), cache emptied: the same machine and disk, before and after a change.

The best cp and the best run of each case are reported.

Targets (issue 4): conversion >= 0.5x the throughput of `cp`, peak RSS < 1 GB. Everything written is
removed at the end unless --keep-files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidport.porting.writer import safetensors_header, tensor_bytes  # noqa: E402
from vidport.runtime.models.wan import family  # noqa: E402
from vidport.runtime.models.wan.tiny_release import read_listing  # noqa: E402

TINY = ROOT / "official_weights" / "wan2.1-t2v-tiny"


def make_release(folder: Path) -> None:
    """A 1.3B-DiT-shaped official release. Tensors are written one at a time."""
    folder.mkdir(parents=True)
    listing = read_listing(family.REFERENCE_KEYS / "official_dit_1.3b_keys.txt")
    entries = [(name, "F32", shape, 4 * _numel(shape)) for name, shape in listing]
    gen = torch.Generator().manual_seed(0)
    path = folder / family.OFFICIAL_FILES["transformer"]
    with open(path, "wb") as f:
        f.write(safetensors_header(entries))
        for _name, _, shape, _ in entries:
            f.write(tensor_bytes(torch.rand(shape, generator=gen)))
    (folder / "config.json").write_text(json.dumps(family.dit_config("1.3b").to_official(), indent=4) + "\n")
    for name in (family.OFFICIAL_FILES["vae"], family.OFFICIAL_FILES["text_encoder"]):
        shutil.copyfile(TINY / name, folder / name)
    shutil.copytree(TINY / family.OFFICIAL_FILES["tokenizer"], folder / family.OFFICIAL_FILES["tokenizer"])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# `port convert` as a child that reports its own peak RSS at exit: VmHWM of its own address space, made at
# exec. (ru_maxrss from wait4 would not do: Linux carries the parent's peak into a forked child, and this
# process has torch imported.)
PORT_CHILD = """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            print("BENCH_VMHWM_KB", line.split()[1], file=sys.stderr)
atexit.register(peak)
from vidport.porting.cli import main
main(sys.argv[1:])
"""


def timed_child(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, int, str]:
    """Run a command; (wall seconds, peak RSS bytes of a PORT_CHILD (else 0), stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    peaks = [int(line.split()[1]) for line in err.decode().splitlines() if line.startswith("BENCH_VMHWM_KB")]
    return wall, (peaks[-1] << 10) if peaks else 0, out.decode()


WEIGHTS = [family.OFFICIAL_FILES[c] for c in family.COMPONENTS]
CASES = ("first", "libraries-cold", "libraries-memo", "before")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="folder on the disk to measure")
    ap.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp16", "fp32"])
    ap.add_argument("--rounds", type=int, default=6, help="cp/convert rounds; the conversions cycle through --cases")
    ap.add_argument("--cases", default="first,libraries-cold,libraries-memo",
                    help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--before", type=Path, default=None, help="the other vidport checkout of the 'before' case")
    ap.add_argument("--real-size", action="store_true", help="every component at its real size (about 17 GB)")
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument("--release", type=Path, default=None,
                    help="reuse the synthetic release of an earlier --keep-files run (left in place)")
    args = ap.parse_args()
    cases = tuple(args.cases.split(","))
    if not set(cases) <= set(CASES) or ("before" in cases) != (args.before is not None):
        ap.error(f"--cases {args.cases!r}: choose from {', '.join(CASES)}; 'before' goes with --before DIR")

    work = Path(tempfile.mkdtemp(prefix="bench_convert-", dir=args.workdir))
    try:
        if args.release is not None:
            release = args.release
        else:
            release = work / "release"
            t0 = time.perf_counter()
            if args.real_size:  # in a child: this process stays small (a child's ru_maxrss starts at its parent's)
                subprocess.run([sys.executable, "-m", "vidport.runtime.models.wan.tiny_release", str(release),
                                "--real-size"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            else:
                make_release(release)
            print(f"synthetic release in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        weights = [release / w for w in WEIGHTS]
        size = sum(w.stat().st_size for w in weights)
        print(f"weights: {size / 1e9:.2f} GB", file=sys.stderr)

        os.sync()  # the release's own dirty pages must not be flushed during the timings
        copies = work / "copies"
        out = work / "converted"
        args_ = ["convert", str(release), "--family", "wan2.1-t2v", "--out", str(out), "--dtype", args.dtype,
                 "--no-progress", "--json"]
        env = {**os.environ, "VIDPORT_CACHE_DIR": str(work / "cache")}
        cp = "mkdir -p '{0}' && cp {1} '{0}/' && sync '{0}'/*".format(copies, " ".join(f"'{w}'" for w in weights))
        runs = []
        for i in range(args.rounds):
            case = cases[i % len(cases)]
            if case != "libraries-memo":
                shutil.rmtree(work / "cache", ignore_errors=True)
            cp_wall, _, _ = timed_child(["sh", "-c", cp])
            shutil.rmtree(copies)
            os.sync()
            if case == "before":
                code = args.before.resolve()
                wall, rss, stdout = timed_child([sys.executable, "-c", PORT_CHILD, *args_],
                                                {**env, "PYTHONPATH": os.pathsep.join(
                                                    [str(code), env.get("PYTHONPATH", "")])}, cwd=code)
            else:
                extra = ["--targets", "libraries"] if case.startswith("libraries") else []
                wall, rss, stdout = timed_child([sys.executable, "-c", PORT_CHILD, *args_, *extra], env)
            report = {c["component"]: c for c in json.loads(stdout)["components"]}
            shutil.rmtree(out)
            os.sync()
            runs.append({"case": case, "cp_s": round(cp_wall, 2), "convert_wall_s": round(wall, 2),
                         **{f"convert_{c}_s": round(r["seconds"], 2) for c, r in report.items()},
                         "peak_rss_MB": round(rss / 1e6, 1)})
            print(json.dumps(runs[-1]), file=sys.stderr)
        cp_best = min(r["cp_s"] for r in runs)
        best = {c: min(r["convert_wall_s"] for r in runs if r["case"] == c) for c in cases}
        result = {
            "weights_bytes": size,
            "real_size": args.real_size,
            "dtype": args.dtype,
            "cp_GBps": round(size / cp_best / 1e9, 3),
            **{f"convert_GBps_end_to_end_{c}": round(size / best[c] / 1e9, 3) for c in cases},
            **{f"ratio_vs_cp_end_to_end_{c}": round(cp_best / best[c], 2) for c in cases},
            "peak_rss_MB": {c: max(r["peak_rss_MB"] for r in runs if r["case"] == c) for c in cases},
            "runs": runs,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep_files:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
