"""`port convert` on the embedded tiny release: the output loads in diffusers (WanPipeline, no missing or
unexpected keys, one denoising step) and in the native runtime strictly; the emitted standalone script
writes the same bytes; a kill -9 leaves no target; disk-full and input errors are one line, exit 2,
nothing written; tensors stream (peak RSS stays near one tensor)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from vidport.porting import layouts
from vidport.porting.cli import main as port_main
from vidport.porting.sources import open_source
from vidport.runtime.models.wan import family

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "official_weights" / "wan2.1-t2v-tiny"
FAMILY = "wan2.1-t2v"
# loader messages that mean a key was missing, unexpected or mis-shaped (diffusers and transformers)
BAD_LOAD = re.compile(r"not used|not initialized|newly initialized|MISSING|UNEXPECTED|MISMATCH|mismatch",
                      re.IGNORECASE)


def port(*args: str) -> int:
    """Run `port ...` in-process; returns the exit code."""
    try:
        port_main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def convert_args(out: Path, *extra: str) -> list[str]:
    return ["convert", str(RELEASE), "--family", FAMILY, "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "wan-tiny"
    assert port(*convert_args(out)) == 0
    return out


class LoadLog(logging.Handler):
    """Collects diffusers' and transformers' log records while loading."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self._levels = {}
        for name in ("diffusers", "transformers"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.INFO)  # the loaders' "all weights used" lines are INFO
            logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("diffusers", "transformers"):
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(self._levels[name])

    def bad(self) -> list[str]:
        return [m for m in self.messages if BAD_LOAD.search(m)]


def load_pipeline(path: Path):
    from diffusers import WanPipeline

    with LoadLog() as log:
        pipe = WanPipeline.from_pretrained(path)
    return pipe, log


# ----------------------------------------------------------------------------------------------
# The proof: diffusers and the native runtime load the converted repo
# ----------------------------------------------------------------------------------------------
def test_layout(converted: Path):
    for rel in ("model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json",
                "conversion.json"):
        assert (converted / rel).is_file(), rel
    index = json.loads((converted / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    sched = json.loads((converted / "scheduler/scheduler_config.json").read_text())
    assert sched["_class_name"] == "UniPCMultistepScheduler"
    assert sched["prediction_type"] == "flow_prediction" and sched["use_flow_sigmas"] is True
    assert sched["flow_shift"] == family.SAMPLING["tiny"]["flow_shift"]
    for f in (RELEASE / "google/umt5-xxl").iterdir():
        assert (converted / "tokenizer" / f.name).read_bytes() == f.read_bytes()
    # no temporary folders left beside the target
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]


def test_diffusers_loads_and_denoises(converted: Path):
    pipe, log = load_pipeline(converted)
    assert not log.bad(), log.bad()
    assert any("WanTransformer3DModel" in m for m in log.messages)  # the capture does see diffusers' logs
    out = pipe("a cat walks on the grass", height=32, width=48, num_frames=5, max_sequence_length=512,
               num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    frames = out.frames[0]
    assert frames.shape == (5, 32, 48, 3)
    assert torch.isfinite(torch.as_tensor(frames)).all()


def test_load_log_catches_missing_and_unexpected(converted: Path, tmp_path: Path):
    """Negative control: the log check above fails when a key is missing or extra."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    for rel in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        sd = load_file(broken / rel)
        sd.pop(sorted(sd)[-1])
        sd["not_a_parameter"] = torch.zeros(2)
        save_file(sd, broken / rel, metadata={"format": "pt"})
    _, log = load_pipeline(broken)
    assert len(log.bad()) >= 2


def test_values_follow_the_official_release(converted: Path):
    """Tensors land under their Diffusers names unchanged (the Wan norm2/norm3 swap included)."""
    dit = open_source(str(RELEASE / "diffusion_pytorch_model.safetensors"))
    with safe_open(converted / "transformer/diffusion_pytorch_model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("blocks.1.norm2.weight"), dit.get("blocks.1.norm3.weight"))
        assert torch.equal(f.get_tensor("blocks.0.attn1.to_q.weight"), dit.get("blocks.0.self_attn.q.weight"))
        assert torch.equal(f.get_tensor("proj_out.weight"), dit.get("head.head.weight"))
    t5 = torch.load(RELEASE / family.OFFICIAL_FILES["text_encoder"], weights_only=True)
    with safe_open(converted / "text_encoder/model.safetensors", "pt") as f:
        assert f.get_tensor("shared.weight").dtype == torch.bfloat16
        assert torch.equal(f.get_tensor("shared.weight"), t5["token_embedding.weight"])
        assert torch.equal(f.get_tensor("encoder.embed_tokens.weight"), t5["token_embedding.weight"])


def test_native_runtime_loads_strictly(converted: Path):
    from vidport.runtime.loading import load_transformer

    model = load_transformer(converted / "transformer", "wan2.1-t2v")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not any(p.is_meta for p in model.parameters())


def test_one_keep_in_fp32_rule(converted: Path):
    """Under bf16 the loader keeps in fp32 exactly the tensors made from the modules diffusers declares
    _keep_in_fp32_modules (the rule port convert applies), and cast_native (benchmarks' seeded models)
    keeps the same set."""
    from diffusers import WanTransformer3DModel
    from vidport.porting.plan import keeps_fp32
    from vidport.runtime.loading import cast_native, load_transformer
    from vidport.runtime.models.wan.config import preset
    from vidport.runtime.models.wan.model import WanDiT

    loaded = load_transformer(converted / "transformer", "wan2.1-t2v", dtype=torch.bfloat16)
    fp32 = {n for n, t in loaded.state_dict().items() if t.dtype == torch.float32}
    assert {"time_embed.fc1.weight", "head.modulation", "blocks.0.modulation", "blocks.0.cross_norm.weight"} <= fp32
    assert not any("qkv" in n or "norm_q" in n for n in fp32)  # made from modules diffusers casts down
    keep = WanTransformer3DModel._keep_in_fp32_modules
    with safe_open(converted / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert sum(keeps_fp32(k, keep) for k in f.keys()) == len(fp32)  # each kept one -> one native tensor
    cfg = preset("tiny")
    cast = cast_native(WanDiT(cfg), "wan2.1-t2v", torch.bfloat16, cfg.to_diffusers())
    assert {n for n, t in cast.state_dict().items() if t.dtype == torch.float32} == fp32


def test_conversion_record(converted: Path):
    rec = json.loads((converted / "conversion.json").read_text())
    files = {f["path"]: f for f in rec["source"]["files"]}
    import hashlib

    vae = RELEASE / family.OFFICIAL_FILES["vae"]
    assert files[vae.name]["sha256"] == hashlib.sha256(vae.read_bytes()).hexdigest()
    assert files[vae.name]["bytes"] == vae.stat().st_size
    assert rec["vidport_version"] and rec["family"] == FAMILY and rec["preset"] == "tiny"
    for comp in family.COMPONENTS:
        c = rec["components"][comp]
        assert c["map"]["text"].startswith("# vidport name map v1")
        assert c["dtype_changes"] == []  # --dtype keep


def test_summary_and_json(tmp_path: Path, capsys):
    assert port(*convert_args(tmp_path / "a")) == 0
    table = capsys.readouterr().out
    for comp in (*family.COMPONENTS, "total"):
        assert comp in table
    assert port(*convert_args(tmp_path / "b", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    by = {c["component"]: c for c in data["components"]}
    assert by["transformer"]["tensors"] == len(open_source(str(RELEASE)).keys())
    assert by["text_encoder"]["dtype"] == "BF16"


# ----------------------------------------------------------------------------------------------
# dtype casting and sharding
# ----------------------------------------------------------------------------------------------
def test_bf16_keeps_fp32_modules(tmp_path: Path):
    from diffusers import WanTransformer3DModel

    out = tmp_path / "bf16"
    assert port(*convert_args(out, "--dtype", "bf16", "--max-shard-size", "150KB")) == 0
    src = open_source(str(out / "transformer"))
    keep = WanTransformer3DModel._keep_in_fp32_modules
    dtypes = {k: v.dtype for k, v in src.infos.items()}
    kept = {k for k in dtypes if any(m in k.split(".") for m in keep)}
    assert kept and {dtypes[k] for k in kept} == {"F32"}
    assert {dtypes[k] for k in dtypes if k not in kept} == {"BF16"}
    assert "blocks.0.scale_shift_table" in kept and "condition_embedder.time_embedder.linear_1.weight" in kept
    assert len(list((out / "transformer").glob("*-of-*.safetensors"))) > 1  # sharded, with an index
    assert (out / "transformer/diffusion_pytorch_model.safetensors.index.json").is_file()
    assert {v.dtype for v in open_source(str(out / "vae")).infos.values()} == {"F32"}  # VAE stays fp32
    rec = json.loads((out / "conversion.json").read_text())
    changes = rec["components"]["transformer"]["dtype_changes"]
    assert len(changes) == len(dtypes) - len(kept) and changes[0]["from"] == "F32" and changes[0]["to"] == "BF16"
    pipe, log = load_pipeline(out)
    assert not log.bad(), log.bad()
    assert pipe.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# --emit-script: byte-identical safetensors
# ----------------------------------------------------------------------------------------------
def test_emitted_script_is_byte_identical(converted: Path, tmp_path: Path):
    script = tmp_path / "convert_wan.py"
    for dtype, shard in (("keep", "5GB"), ("fp16", "200KB")):
        ref = converted if dtype == "keep" else tmp_path / f"ref-{dtype}"
        if dtype != "keep":
            assert port(*convert_args(ref, "--dtype", dtype, "--max-shard-size", shard)) == 0
        assert port(*convert_args(ref, "--dtype", dtype, "--max-shard-size", shard, "--emit-script", script)) == 0
        text = script.read_text()
        assert "import vidport" not in text and "from vidport" not in text
        out = tmp_path / f"script-{dtype}"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run([sys.executable, "-I", str(script), str(RELEASE), str(out)], capture_output=True,
                           text=True, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        ours = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file() and p.name != "conversion.json")
        theirs = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "conversion.json")
        assert ours == theirs
        assert any(p.suffix == ".safetensors" for p in ours)
        for rel in ours:
            assert (ref / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_sharded_official_dit(converted: Path, tmp_path: Path):
    """A release whose DiT is sharded with an index (as the 14B release is) converts to the same bytes."""
    from safetensors.torch import save_file

    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    single = release / family.OFFICIAL_FILES["transformer"]
    src = open_source(str(single))
    keys = src.keys()
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: src.get(k) for k in part}, release / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (release / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    single.unlink()
    out = tmp_path / "out"
    assert port("convert", release, "--family", FAMILY, "--out", out, "--no-progress") == 0
    rel = "transformer/diffusion_pytorch_model.safetensors"
    assert (out / rel).read_bytes() == (converted / rel).read_bytes()
    files = [f["path"] for f in json.loads((out / "conversion.json").read_text())["source"]["files"]]
    assert "diffusion_pytorch_model.safetensors.index.json" in files
    assert "diffusion_pytorch_model-00002-of-00002.safetensors" in files


# ----------------------------------------------------------------------------------------------
# Atomicity
# ----------------------------------------------------------------------------------------------
KILL_CHILD = textwrap.dedent("""
    import os, signal, sys
    from vidport.porting.writer import TensorSink
    from vidport.porting.cli import main

    kill_after = int(sys.argv.pop(1))
    written = TensorSink.written

    def written_then_kill(self):  # the seam: SIGKILL right after the N-th tensor is on disk
        written(self)
        if self.count >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    TensorSink.written = written_then_kill
    main(sys.argv[1:])
""")


def _subprocess_convert(out: Path, kill_after: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_CHILD, str(kill_after), *convert_args(out)],
                          capture_output=True, text=True, cwd=ROOT)


def test_kill_9_leaves_no_target_and_rerun_succeeds(tmp_path: Path, capsys):
    out = tmp_path / "killed"
    # killed after the first tensor, and right after the last one (every weight on disk; the configs,
    # the target check and the rename not yet done)
    total = sum(len(open_source(str(RELEASE), c).keys()) for c in family.COMPONENTS) + 1  # + the tie
    for n in (1, total):
        r = _subprocess_convert(out, kill_after=n)
        assert r.returncode == -9, r.stderr
        assert not out.exists()
        leftovers = [p for p in tmp_path.iterdir() if ".vidport-tmp-" in p.name]
        assert leftovers and any(leftovers[-1].rglob("*.safetensors"))  # it had started writing
    assert port(*convert_args(out)) == 0
    assert "left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]
    _, log = load_pipeline(out)
    assert not log.bad()


def test_existing_target_needs_force(converted: Path, tmp_path: Path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert port(*convert_args(out)) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and len(err.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "old"
    assert port(*convert_args(out, "--force")) == 0
    assert not (out / "keep.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_disk_full_mid_write(tmp_path: Path, capsys, monkeypatch):
    import vidport.porting.writer as engine

    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    calls = {"n": 0}

    def filling(real):  # the 41st write, through Python or in the kernel, finds the disk full
        def write(self, *args):
            calls["n"] += 1
            if calls["n"] > 40:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args)
        return write

    monkeypatch.setattr(engine.SafetensorsWriter, "_write", filling(engine.SafetensorsWriter._write))
    monkeypatch.setattr(engine.SafetensorsWriter, "copy", filling(engine.SafetensorsWriter.copy))
    assert port(*convert_args(out, "--force")) == 2
    err = capsys.readouterr().err.strip()
    assert "disk full" in err and "untouched" in err and len(err.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "old" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_not_enough_space_up_front(tmp_path: Path, capsys, monkeypatch):
    import vidport.porting.convert as engine

    monkeypatch.setattr(engine.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    assert port(*convert_args(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert "not enough free space" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Input errors: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------
def test_missing_release_files(tmp_path: Path, capsys):
    broken = tmp_path / "release"
    shutil.copytree(RELEASE, broken)
    (broken / family.OFFICIAL_FILES["vae"]).unlink()
    shutil.rmtree(broken / "google")
    out = tmp_path / "o"
    assert port("convert", broken, "--family", FAMILY, "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Wan2.1_VAE.pth" in err and "google/umt5-xxl" in err
    assert not out.exists()


def test_truncated_pickle(tmp_path: Path, capsys):
    broken = tmp_path / "release"
    shutil.copytree(RELEASE, broken)
    vae = broken / family.OFFICIAL_FILES["vae"]
    with open(vae, "r+b") as f:
        f.truncate(5000)
    out = tmp_path / "o"
    assert port("convert", broken, "--family", FAMILY, "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(vae) in err and "re-download it" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_bad_dtype_and_unwritable_out(tmp_path: Path, capsys):
    assert port(*convert_args(tmp_path / "o", "--dtype", "int8")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int8" in err and "bf16" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert port(*convert_args(blocker / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err
    assert port(*convert_args(tmp_path / "o", "--family", "nope")) == 2
    assert "unknown model family" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_map_that_misses_a_key_is_refused(tmp_path: Path, capsys):
    text = family.OFFICIAL_TO_DIFFUSERS["transformer"].read_text()
    broken = tmp_path / "t.map"
    broken.write_text("\n".join(line for line in text.splitlines() if "norm3" not in line) + "\n")
    assert port(*convert_args(tmp_path / "o", "--map", f"transformer={broken}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "match no rule" in err and "norm3" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.map"]


def test_map_with_wrong_shapes_is_refused_before_publishing(tmp_path: Path, capsys):
    """The check against the target models runs while tensors stream; a mismatch still publishes nothing."""
    text = family.OFFICIAL_TO_DIFFUSERS["transformer"].read_text()
    swapped = text.replace("text_embedder.linear_1", "TMP").replace("text_embedder.linear_2", "text_embedder.linear_1")
    broken = tmp_path / "t.map"
    broken.write_text(swapped.replace("TMP", "text_embedder.linear_2"))
    assert port(*convert_args(tmp_path / "o", "--map", f"transformer={broken}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shape mismatch" in err and "text_embedder.linear_1.weight" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.map"]


# ----------------------------------------------------------------------------------------------
# Streaming: peak RSS stays near one tensor whatever the checkpoint size
# ----------------------------------------------------------------------------------------------
STREAM_CHILD = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    import vidport.porting.writer
    from vidport.porting.plan import plan_component
    from vidport.porting.streaming import open_streaming
    from vidport.porting.writer import TensorSink, write_component
    vidport.porting.writer.CHUNK_BYTES = 1 << 20  # pieces of 1 MiB: a whole 8 MiB tensor is never held
    from vidport.porting.namemap import NameMap

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    def checkpoints(folder, numel):  # 8 tensors of numel fp32 elements, as a pickle and as a safetensors file
        folder.mkdir()
        sd = {f"w{i}": torch.full((numel,), float(i)) for i in range(8)}
        torch.save(sd, folder / "ckpt.pth")
        save_file(sd, folder / "ckpt.safetensors")
        return {f"out.{i}.weight": (numel,) for i in range(8)}

    def convert_all(folder, shapes, report):
        for name, dtype in (("ckpt.pth", "keep"), ("ckpt.pth", "bf16"), ("ckpt.safetensors", "keep"),
                            ("ckpt.safetensors", "bf16")):
            src = open_streaming(folder / name)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            base = hwm()
            comp = plan_component("c", src, name_map, "test", shapes, weights_stem="model", keep_fp32=(),
                                  dtype=dtype, max_shard_size=20 << 20)
            write_component(comp, folder / f"out-{dtype}-{name}", TensorSink(), lambda b: None)
            src.close()
            if report:
                print(f"{name}:{dtype}", hwm() - base, flush=True)

    tmp = Path(sys.argv[1])
    name_map = NameMap.loads("rename ^w(\\\\d+)$ -> out.\\\\1.weight")
    # a small warm-up run first: the first cast or write maps code pages of libtorch and grows the heap once,
    # which is not what is measured
    convert_all(tmp / "warm", checkpoints(tmp / "warm", 1 << 19), report=False)
    convert_all(tmp / "big", checkpoints(tmp / "big", 2 << 20), report=True)  # 8 MiB tensors, 64 MiB files
""")


def test_streaming_peak_rss(tmp_path: Path):
    r = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    growth = dict(line.split() for line in r.stdout.splitlines())
    one_tensor = 8 << 20
    assert len(growth) == 4
    for name, grew in growth.items():
        # a checkpoint is 64 MiB: holding it (or its mmap pages) would grow RSS by >= 64 MiB, holding one
        # whole tensor by >= 8 MiB; streaming in 1 MiB pieces (read, cast, write, release) stays below
        assert int(grew) < one_tensor, f"{name}: peak RSS grew {int(grew) >> 20} MiB while streaming"
    for dtype in ("keep", "bf16"):
        for name in ("ckpt.pth", "ckpt.safetensors"):
            out = open_source(str(tmp_path / "big" / f"out-{dtype}-{name}" / "model.safetensors.index.json"))
            assert len(out.keys()) == 8 and float(out.get("out.7.weight")[-1]) == 7.0
            assert out.infos["out.7.weight"].dtype == ("F32" if dtype == "keep" else "BF16")


# ----------------------------------------------------------------------------------------------
# Where the target side comes from. The tiny release's configs are in the family's shipped layouts:
# converting it imports neither diffusers nor transformers. --targets libraries builds the models; the
# memo of that path: a warm run imports neither and writes the same bytes; a damaged memo is ignored
# and rewritten; another output dtype is another entry.
# ----------------------------------------------------------------------------------------------
CACHE_CHILD = textwrap.dedent("""
    import sys
    from vidport.porting.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        if e.code:
            raise
    print("imported", "diffusers" in sys.modules, "transformers" in sys.modules)
""")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CONFIG_FILES = ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")


def assert_same_repo(shipped: dict[str, bytes], built: dict[str, bytes]):
    """A shipped-layout tree against a library-built one: conversion.json records where the target layout
    came from; the config files may differ by which diffusers/transformers wrote them (the shipped ones:
    the versions in layouts.json) and, when the installed libraries are newer, by fields that load the
    same (``layouts.config_drift``). Everything else must be identical."""
    def strip(tree: dict[str, bytes]) -> dict:
        record = json.loads(tree["conversion.json"])
        assert record.pop("targets")
        return {**{k: v for k, v in tree.items() if k not in CONFIG_FILES}, "conversion.json": record}

    assert strip(shipped) == strip(built)
    for rel in CONFIG_FILES:
        real, _ = layouts.config_drift(shipped[rel].decode(), built[rel].decode())
        assert real == [], rel


def test_target_sources(tmp_path: Path):
    env = {**os.environ, "VIDPORT_CACHE_DIR": str(tmp_path / "cache")}

    def run(out: str, *extra: str) -> str:
        r = subprocess.run([sys.executable, "-c", CACHE_CHILD, *convert_args(tmp_path / out, *extra)],
                           capture_output=True, text=True, cwd=ROOT, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.split("imported")[-1].split()

    assert run("shipped") == ["False", "False"]  # the shipped layout: no library imported, nothing memoised
    assert not (tmp_path / "cache").exists()
    record = json.loads((tmp_path / "shipped" / "conversion.json").read_text())
    assert record["targets"].startswith("runtime/models/wan/layouts.json (written with diffusers ")

    libraries = ("--targets", "libraries")
    assert run("cold", *libraries) == ["True", "True"]  # built the target models
    assert json.loads((tmp_path / "cold" / "conversion.json").read_text())["targets"].startswith("diffusers ")
    assert_same_repo(tree_bytes(tmp_path / "shipped"), tree_bytes(tmp_path / "cold"))
    entries = list((tmp_path / "cache" / "convert-targets").glob("*.json"))
    assert len(entries) == 1
    assert run("warm", *libraries) == ["False", "False"]
    assert tree_bytes(tmp_path / "warm") == tree_bytes(tmp_path / "cold")

    entries[0].write_text("{not json")
    assert run("damaged", *libraries) == ["True", "True"]
    assert tree_bytes(tmp_path / "damaged") == tree_bytes(tmp_path / "cold")
    entry = json.loads(entries[0].read_text())
    assert "targets" in entry
    entries[0].write_text(json.dumps({**entry, "targets": {"transformer": 5}}))  # JSON, its key, wrong shape
    assert run("malformed", *libraries) == ["True", "True"]
    assert tree_bytes(tmp_path / "malformed") == tree_bytes(tmp_path / "cold")

    # fp16: the umT5 config records another dtype, so its config files are built (and memoised) too
    assert run("fp16", "--dtype", "fp16", *libraries) == ["True", "True"]
    te = json.loads((tmp_path / "fp16" / "text_encoder" / "config.json").read_text())
    assert te.get("dtype", te.get("torch_dtype")) == "float16"
    assert set(json.loads(entries[0].read_text())["files"]) == {"BF16", "F16"}  # keep: the source umT5 is bf16
    # the shipped layout has the fp16 umT5 config too, the same bytes
    assert run("fp16-shipped", "--dtype", "fp16") == ["False", "False"]
    assert_same_repo(tree_bytes(tmp_path / "fp16-shipped"), tree_bytes(tmp_path / "fp16"))

    env["VIDPORT_CACHE_DIR"] = ""  # no cache at all
    assert run("uncached", *libraries) == ["True", "True"]
    assert tree_bytes(tmp_path / "uncached") == tree_bytes(tmp_path / "cold")
    assert len(list((tmp_path / "cache" / "convert-targets").glob("*.json"))) == 1


# ----------------------------------------------------------------------------------------------
# Real sizes, on the meta device: the committed maps and the configs derived from shapes fit the
# Diffusers models of the real 1.3B / 14B releases (published key listings, no weights)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["1.3b", "14b"])
def test_real_release_plans_on_meta(preset: str):
    from vidport.porting.namemap import NameMap
    from vidport.porting.plan import plan_component
    from vidport.porting.sources import StateDictSource, TensorInfo
    from vidport.runtime.models.wan.release import _target_configs, build_targets
    from vidport.runtime.models.wan.tiny_release import read_listing

    def listing(name: str, dtype: str) -> StateDictSource:
        src = StateDictSource()
        src.description = name
        for key, shape in read_listing(family.REFERENCE_KEYS / name):
            src._infos[key] = TensorInfo(key, shape, dtype)
        return src

    sources = {"transformer": listing(f"official_dit_{preset}_keys.txt", "F32"),
               "vae": listing("official_vae_keys.txt", "F32"),
               "text_encoder": listing("official_umt5xxl_keys.txt", "BF16")}
    targets, component_files = build_targets(_target_configs(family.dit_config(preset), preset, sources))
    sizes = {}
    for comp in family.COMPONENTS:
        shapes, stem, keep = targets[comp]
        plan = plan_component(comp, sources[comp], NameMap.load(family.OFFICIAL_TO_DIFFUSERS[comp]), comp, shapes,
                              weights_stem=stem, keep_fp32=keep, dtype="bf16", max_shard_size=5 * 10**9)
        sizes[comp] = (len(plan.tensors), len(plan.shards))
    n_dit = {"1.3b": 825, "14b": 1095}[preset]
    assert sizes == {"transformer": (n_dit, 1 if preset == "1.3b" else 6), "vae": (194, 1), "text_encoder": (243, 3)}
    text_encoder = json.loads(component_files("BF16")["text_encoder/config.json"])
    assert (text_encoder["d_model"], text_encoder["num_layers"], text_encoder["vocab_size"]) == (4096, 24, 256384)
    vae = json.loads(component_files("BF16")["vae/config.json"])
    assert (vae["base_dim"], vae["z_dim"]) == (96, 16)


def test_single_file_release_components_by_prefix(tmp_path: Path, capsys):
    """A single-file release holding several components under key prefixes: ``FILE#PREFIX`` reads one of
    them (names as the file spells them), streams it with kernel copies like any safetensors file, and a
    prefix the file lacks is one line naming the prefixes it has."""
    from safetensors.torch import save_file
    from vidport.porting.namemap import NameMap
    from vidport.porting.plan import plan_component
    from vidport.porting.sources import PrefixedSource
    from vidport.porting.streaming import open_streaming
    from vidport.porting.writer import TensorSink, write_component

    tensors = {"model.diffusion_model.blocks.0.attn.to_q.weight": torch.randn(4, 4),
               "model.diffusion_model.proj_out.weight": torch.randn(2, 4),
               "vae.decoder.conv_in.weight": torch.randn(3, 3)}
    single = tmp_path / "release.safetensors"
    save_file(tensors, single)
    vae = open_source(f"{single}#vae.")
    assert vae.keys() == ["vae.decoder.conv_in.weight"] and vae.description.endswith("#vae.")
    assert torch.equal(vae.get("vae.decoder.conv_in.weight"), tensors["vae.decoder.conv_in.weight"])
    assert port("diff-keys", f"{single}#audio.", f"{single}#vae.") == 2
    err = capsys.readouterr().err
    assert "no tensors under the key prefix 'audio.'" in err and "model., vae." in err

    dit = PrefixedSource(open_streaming(single), "model.diffusion_model.")
    name_map = NameMap.loads("# vidport name map v1\nrename   ^model\\.diffusion_model\\.(.*)$  ->  \\1\n")
    comp = plan_component("transformer", dit, name_map, "test", None, weights_stem="w", keep_fp32=(), dtype="keep",
                          max_shard_size=1 << 30)
    write_component(comp, tmp_path / "out", TensorSink(), lambda n: None)
    with safe_open(tmp_path / "out" / "w.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["blocks.0.attn.to_q.weight", "proj_out.weight"]
        assert torch.equal(f.get_tensor("proj_out.weight"), tensors["model.diffusion_model.proj_out.weight"])
