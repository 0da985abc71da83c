"""The torch-free tensor table of a torch.save'd checkpoint (porting.torchzip) against torch.load, and the
conversion of checkpoints that mix tensors copied by byte range with tensors only torch can describe."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vidport.porting.namemap import NameMap
from vidport.porting.plan import plan_component
from vidport.porting.streaming import open_streaming
from vidport.porting.torchzip import read_table
from vidport.porting.writer import TensorSink, write_component

from vidport.dtypes import dtype_name

ROOT = Path(__file__).resolve().parents[1]


def checkpoint() -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["plain"] = torch.randn(3, 5, generator=g)
    sd["bf16"] = torch.randn(7, generator=g).to(torch.bfloat16)
    sd["f16"] = torch.randn(2, 2, generator=g).half()
    sd["int64"] = torch.arange(5)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["base"] = base
    sd["row"] = base[2]  # a view at an offset into a shared storage: contiguous
    sd["rows"] = base[1:3]
    sd["transposed"] = base.t()  # shared storage, not contiguous
    sd["strided"] = base[:, ::2]
    sd["param"] = torch.nn.Parameter(torch.randn(2, 3, generator=g), requires_grad=False)
    return sd


def test_table_matches_torch_load(tmp_path: Path):
    sd = checkpoint()
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    table = read_table(path)
    assert table is not None and list(table) == list(sd)
    raw = path.read_bytes()
    loaded = torch.load(path, weights_only=True)
    for name, t in table.items():
        ref = loaded[name]
        assert t.shape == tuple(ref.shape) and t.dtype == dtype_name(ref.dtype), name
        assert t.contiguous == ref.is_contiguous(), name
        if t.contiguous:
            expect = ref.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if ref.numel() else b""
            assert raw[t.offset:t.offset + t.nbytes] == expect, name


def test_what_the_table_cannot_describe_is_left_to_torch(tmp_path: Path):
    cases = {
        "legacy.pth": lambda p: torch.save({"a": torch.ones(2)}, p, _use_new_zipfile_serialization=False),
        "nested.pth": lambda p: torch.save({"model": {"a": torch.ones(2)}}, p),
        "not_tensor.pth": lambda p: torch.save({"a": torch.ones(2), "step": 3}, p),
        "list.pth": lambda p: torch.save([torch.ones(2)], p),
        "truncated.pth": lambda p: (torch.save({"a": torch.ones(1000)}, p), os.truncate(p, 2000)),
        "text.pth": lambda p: p.write_text("not a checkpoint"),
    }
    for name, make in cases.items():
        make(tmp_path / name)
        assert read_table(tmp_path / name) is None, name
    # a compressed storage entry cannot be copied by byte range
    torch.save({"a": torch.ones(64)}, tmp_path / "stored.pth")
    with zipfile.ZipFile(tmp_path / "stored.pth") as src, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert read_table(tmp_path / "deflated.pth") is None


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_table_reader_never_runs_a_pickle(tmp_path: Path):
    """A data.pkl that would run a command when unpickled: the reader stops at the first unknown name, and
    the fallback (torch.load weights_only) refuses it with one line naming the file."""
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pth")
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"a": Payload()}, protocol=2)
            dst.writestr(info.filename, data)
    assert read_table(evil) is None
    assert not (tmp_path / "pwned").exists()
    r = subprocess.run([sys.executable, "-c", "import sys; from vidport.porting.streaming import open_streaming; "
                        "open_streaming(sys.argv[1])", str(evil)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0 and "not a loadable weights-only tensor checkpoint" in r.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("dtype", ["keep", "bf16"])
def test_mixed_checkpoint_converts_exactly(tmp_path: Path, dtype: str):
    """Contiguous tensors are copied by byte range, the others (and every cast) go through torch.load;
    either way the output holds torch.load's values."""
    sd = checkpoint()
    torch.save(sd, tmp_path / "ckpt.pth")
    src = open_streaming(tmp_path / "ckpt.pth")
    assert [n for n in sd if src.copyable(n)] == [n for n, t in sd.items() if t.is_contiguous()]
    name_map = NameMap.loads(r"rename ^(.+)$ -> out.\1")
    comp = plan_component("c", src, name_map, "test", None, weights_stem="model", keep_fp32=(), dtype=dtype,
                          max_shard_size=1 << 30)
    write_component(comp, tmp_path / "out", TensorSink(), lambda b: None)
    src.close()
    out = load_file(tmp_path / "out" / "model.safetensors")
    loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    for name, ref in loaded.items():
        want = ref.to(torch.bfloat16) if dtype == "bf16" and ref.is_floating_point() else ref
        assert out[f"out.{name}"].dtype == want.dtype and torch.equal(out[f"out.{name}"], want), name


def test_keep_conversion_imports_no_torch(tmp_path: Path):
    """--dtype keep of the embedded release: every tensor is copied by byte range, planned from headers and
    tables: the process never imports torch (nor diffusers/transformers: the layout is shipped)."""
    child = ("import sys; from vidport.porting.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", child, "convert", str(ROOT / "official_weights" / "wan2.1-t2v-tiny"),
                        "--family", "wan2.1-t2v", "--out", str(tmp_path / "out"), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "VIDPORT_CACHE_DIR": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "text_encoder" / "model.safetensors").is_file()
