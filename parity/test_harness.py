"""Self-tests of the harness: a harness that cannot fail proves nothing.

Each corruption is a realistic porting bug applied to the native side of the tiny Wan DiT (its weights
loaded from the tiny repo through the diffusers->native map); the harness must name the exact first
divergent module, and the clean map must pass. The reference is diffusers' WanTransformer3DModel.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from vidport.parity.align import align_by_params
from vidport.parity.harness import run_parity
from vidport.parity.metrics import compare
from vidport.parity.tolerances import TOLERANCES, tolerance
from vidport.porting.namemap import NameMap
from vidport.porting.sources import open_source
from vidport.runtime.loading import StrictLoadError, load_into, read_diffusers_config
from vidport.runtime.models.wan.config import WanDiTConfig
from vidport.runtime.models.wan.model import WanDiT
from vidport.runtime.models.wan.parity import diffusers_to_native, transformer_setup

FAMILY = "wan2.1-t2v"  # the parity fixtures' family (tiny_repo)


def native_from(folder, name_map: NameMap, cls=WanDiT, edit=None) -> WanDiT:
    cfg = WanDiTConfig.from_diffusers(read_diffusers_config(folder))
    with torch.device("meta"):
        model = cls(cfg)
    load_into(model, open_source(str(folder)), name_map)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    return model.eval()


def parity(repo, native, name_map=None, **kw):
    s = transformer_setup(repo, native=native)
    return run_parity(s.reference, s.run_reference, s.native, s.run_native,
                      name_map=name_map or diffusers_to_native(), **kw)


def corrupted_map(old: str, new: str) -> NameMap:
    text = diffusers_to_native().dumps()
    assert old in text, old
    return NameMap.loads(text.replace(old, new), origin="corrupted")


def assert_first(report, native: str, reference: tuple[str, ...], *, input_diverged: bool):
    first = report.first_failure
    assert first is not None, report.table()
    assert (first.pair.native, first.pair.ref) == (native, reference), report.table()
    assert first.input_cmp is not None
    assert first.input_cmp.passed is (not input_diverged), report.table()
    # everything that ran before it matched
    earlier = [r for r in report.rows if r.status != "not run" and r.order < first.fail_order]
    assert all(r.status == "pass" for r in earlier), report.table()


# --- the clean map -------------------------------------------------------------------------------
def test_clean_map_passes(tiny_repo):
    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native()))
    assert report.passed, report.table()
    statuses = {r.pair.native: r.status for r in report.rows}
    # the aligned set is derived from the map: blocks, attentions, fused projections, the output
    for name in ("patch_embedding", "blocks.0", "blocks.1.attn", "blocks.1.attn.qkv", "blocks.0.cross_attn.kv",
                 "blocks.0.cross_norm", "head.proj", "<output>"):
        assert statuses[name] == "pass", (name, report.table())
    data = json.loads(report.to_json())
    assert data["passed"] and data["first_failure"] is None and data["tolerance"] == TOLERANCES["fp32"].as_dict()


# --- swap the cross-attention norm with the FFN norm ------------------------------------------------
# In the diffusers layout the affine cross-attention norm is ``norm2`` and the FFN norm ``norm3`` has no
# parameters; natively they are ``cross_norm`` and a functional norm. Swapping the names in the map is
# therefore refused by strict loading; the swap that can really happen is the one diffusers' lenient
# loading makes of it: the cross-attention norm left computing what the FFN norm computes (no affine).
SWAP_OLD = "rename   ^blocks\\.(\\d+)\\.norm2\\.(weight|bias)$  ->  blocks.\\1.cross_norm.\\2"
SWAP_NEW = "rename   ^blocks\\.(\\d+)\\.norm2\\.(weight|bias)$  ->  blocks.\\1.norm3.\\2"


def test_swapped_norm_names_are_refused_by_strict_loading(tiny_repo):
    with pytest.raises(StrictLoadError) as err:
        native_from(tiny_repo / "transformer", corrupted_map(SWAP_OLD, SWAP_NEW))
    msg = str(err.value)
    assert "blocks.0.cross_norm.weight" in msg and "blocks.0.norm3.weight" in msg


def test_cross_norm_computing_the_ffn_norm_is_named(tiny_repo):
    def ffn_norm_in_cross_norm(m):
        for block in m.blocks:
            block.cross_norm.weight.fill_(1.0)
            block.cross_norm.bias.zero_()

    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native(),
                                           edit=ffn_norm_in_cross_norm))
    assert_first(report, "blocks.0.cross_norm", ("blocks.0.norm2",), input_diverged=False)
    assert "inside this module" in report.first_failure.diagnosis


# --- permute the patch order ------------------------------------------------------------------------
def test_patch_kernel_order_is_named(tiny_repo):
    # a converter that wrote the patch-embedding kernel as (pw, ph): patch pixels permuted
    def transpose_kernel(m):
        m.patch_embedding.weight.copy_(m.patch_embedding.weight.transpose(-1, -2).contiguous())

    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native(), edit=transpose_kernel))
    assert_first(report, "patch_embedding", ("patch_embedding",), input_diverged=False)


class WidthMajorPatchify(WanDiT):
    """A port that flattens patches in (frame, width, height) order, and unflattens the same way:
    consistent with itself, wrong against the reference."""

    def patchify(self, x):
        x = self.patch_embedding(x.to(self.dtype))
        grid = tuple(x.shape[2:])
        return x.transpose(3, 4).flatten(2).transpose(1, 2), grid


def test_token_order_is_named(tiny_repo):
    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native(),
                                           cls=WidthMajorPatchify))
    # the conv output still matches; the first consumer of the tokens diverges, through its input
    assert report.row("patch_embedding").status == "pass"
    assert_first(report, "blocks.0.attn.qkv", ("blocks.0.attn1.to_q", "blocks.0.attn1.to_k", "blocks.0.attn1.to_v"),
                 input_diverged=True)
    assert "between modules" in report.first_failure.diagnosis


# --- drop a modulation chunk --------------------------------------------------------------------------
def test_dropped_modulation_chunk_is_named(tiny_repo):
    # block 1's table lost chunk 1 (scale of the self-attention input): later chunks shift left
    def drop_chunk(m):
        t = m.blocks[1].modulation
        t.copy_(torch.cat([t[:, :1], t[:, 2:], torch.zeros_like(t[:, :1])], dim=1))

    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native(), edit=drop_chunk))
    assert_first(report, "blocks.1.attn.qkv", ("blocks.1.attn1.to_q", "blocks.1.attn1.to_k", "blocks.1.attn1.to_v"),
                 input_diverged=True)
    block0 = [r for r in report.rows if r.pair.native.startswith("blocks.0") and r.status != "not run"]
    assert block0 and all(r.status == "pass" for r in block0), report.table()


# --- a wrong merge order in the map itself ------------------------------------------------------------
def test_qkv_merge_order_in_the_map_is_named(tiny_repo):
    bad = corrupted_map("attn1\\.to_(?P<part>q|k|v)\\.(weight|bias)$  ->  blocks.\\1.attn.qkv.\\3  parts=q,k,v",
                        "attn1\\.to_(?P<part>q|k|v)\\.(weight|bias)$  ->  blocks.\\1.attn.qkv.\\3  parts=k,q,v")
    report = parity(tiny_repo, native_from(tiny_repo / "transformer", bad), name_map=bad)
    # aligned through the map under test, the fused output matches its (mis-ordered) concatenation; the
    # first module that reads q is where the port goes wrong
    assert report.row("blocks.0.attn.qkv").status == "pass"
    assert_first(report, "blocks.0.attn.norm_q", ("blocks.0.attn1.norm_q",), input_diverged=True)


def test_saves_both_sides_of_the_first_failure(tiny_repo, tmp_path):
    def transpose_kernel(m):
        m.patch_embedding.weight.copy_(m.patch_embedding.weight.transpose(-1, -2).contiguous())

    report = parity(tiny_repo, native_from(tiny_repo / "transformer", diffusers_to_native(), edit=transpose_kernel),
                    save_failing=tmp_path)
    data = torch.load(report.saved, weights_only=False)
    assert data["native_module"] == "patch_embedding"
    assert data["native"][0].shape == data["reference"]["patch_embedding"][0].shape
    assert "first divergent module: native patch_embedding" in report.table()


# --- alignment and metrics on small modules -----------------------------------------------------------
def test_alignment_from_the_map(tiny_repo):
    s = transformer_setup(tiny_repo)
    pairs = {p.native: p for p in align_by_params(s.reference, s.native, diffusers_to_native())}
    assert pairs["blocks.1.attn"].ref == ("blocks.1.attn1",)
    assert pairs["blocks.0.attn.qkv"].adapter == "concat:-1"
    assert pairs["blocks.0.cross_attn.kv"].ref == ("blocks.0.attn2.to_k", "blocks.0.attn2.to_v")
    assert pairs["blocks.0.ffn.fc1"].ref == ("blocks.0.ffn.net.0.proj",)  # innermost wrapper pairs first
    assert pairs["head.proj"].ref == ("proj_out",)


def test_batched_native_call_matches_list_of_samples():
    torch.manual_seed(0)
    ref, nat = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))
    nat.load_state_dict(ref.state_dict())
    a, b = torch.randn(1, 4), torch.randn(1, 4)
    report = run_parity(ref, lambda: (ref(a), ref(b)), nat, lambda: nat(torch.cat([a, b])))
    row = report.row("0")
    assert row.status == "pass" and "batched" in row.note
    nat[0].bias.data += 1e-3
    report = run_parity(ref, lambda: (ref(a), ref(b)), nat, lambda: nat(torch.cat([a, b])))
    assert report.first_failure.pair.native == "0"


def test_metrics_count_nan_and_fail():
    ref = torch.ones(10)
    bad = ref.clone()
    bad[3] = float("nan")
    c = compare(ref, bad, tolerance("fp32"))
    assert not c.passed and c.nan_native == 1 and c.nan_ref == 0 and c.max_abs == 0.0
    assert not compare(ref, torch.ones(2, 5), tolerance("fp32")).passed


def test_one_tolerance_table_per_dtype():
    ref = torch.linspace(-1, 1, 1000)
    near = ref + 1e-3 * torch.sin(ref * 50)
    assert not compare(ref, near, tolerance("fp32")).passed
    assert compare(ref, near, tolerance("bf16")).passed
    assert compare(ref, ref.bfloat16().float(), tolerance("bf16")).passed
    assert set(TOLERANCES) == {"fp32", "bf16", "fp16"}
    with pytest.raises(ValueError):
        tolerance(torch.int8)


# --- the command ----------------------------------------------------------------------------------------
def test_port_parity_command(tiny_repo):
    from click.testing import CliRunner
    from vidport.porting.cli import cli

    result = CliRunner().invoke(cli, ["parity", "wan2.1-t2v", "--component", "text_encoder", "--weights",
                                      str(tiny_repo), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and data["dtype"] == "fp32" and len(data["modules"]) > 10


def test_port_parity_bad_weights_is_one_line(tmp_path, capsys):
    from vidport.porting.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["parity", "wan2.1-t2v", "--weights", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model_index.json" in err


# --- a corrupted official -> Diffusers map, end to end through `port convert` --------------------------
def test_corrupted_conversion_map_is_named(tmp_path):
    """q/k norm scales swapped by the conversion map: the repo loads strictly (same shapes), and parity
    against the official DiT converted by diffusers' own converter names the module."""
    from click.testing import CliRunner
    from vidport.parity.repos import tiny_release
    from vidport.porting.cli import cli
    from vidport.runtime.models.wan import family

    text = family.OFFICIAL_TO_DIFFUSERS["transformer"].read_text()
    rule = "rename   ^blocks\\.(\\d+)\\.self_attn\\.(norm_q|norm_k)\\.weight$"
    assert rule in text
    swapped = ("rename   ^blocks\\.(\\d+)\\.self_attn\\.norm_q\\.weight$  ->  blocks.\\1.attn1.norm_k.weight\n"
               "rename   ^blocks\\.(\\d+)\\.self_attn\\.norm_k\\.weight$  ->  blocks.\\1.attn1.norm_q.weight\n")
    bad_map = tmp_path / "swapped.map"
    bad_map.write_text(text.replace(rule, swapped + rule, 1))
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["convert", str(tiny_release("wan2.1-t2v")),
                                      "--family", "wan2.1-t2v", "--out", str(repo),
                                      "--map", f"transformer={bad_map}", "--no-progress"])
    assert result.exit_code == 0, result.output
    s = transformer_setup(repo, official=tiny_release("wan2.1-t2v"))
    report = run_parity(s.reference, s.run_reference, s.native, s.run_native, name_map=s.name_map)
    assert_first(report, "blocks.0.attn.norm_q", ("blocks.0.attn1.norm_q",), input_diverged=False)
