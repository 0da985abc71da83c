"""LTX-Video's official -> Diffusers transformer map: written by `port diff-keys` from the key listings of the
official release (runtime/models/ltx_video/reference/, the official Transformer3DModel built on the meta device),
re-inferred here, and checked against diffusers' own converter traced on the same keys."""

from __future__ import annotations

import json
from pathlib import Path

from vidport.porting.diffkeys import diff_keys
from vidport.porting.namemap import NameMap
from vidport.porting.sources import KeysFileSource

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "runtime" / "models" / "ltx_video"
OFFICIAL = FOLDER / "reference" / "official_transformer_2b_keys.txt"
DIFFUSERS = FOLDER / "reference" / "diffusers_transformer_2b_keys.txt"
MAP = FOLDER / "maps" / "official_to_diffusers_transformer.map"
TRUTH = ROOT / "tests" / "data" / "diffkeys_families" / "ltx_video" / "truth.json"


def test_the_committed_map_is_what_diff_keys_infers():
    d = diff_keys(KeysFileSource(OFFICIAL), KeysFileSource(DIFFUSERS))
    assert d.complete and not d.inference.unresolved
    assert d.evidence_counts() == {"exact name": 595, "names + shapes": 120}  # patchify_proj, adaln_single, q_norm...
    assert [r.to_line() for r in d.name_map.rules] == [r.to_line() for r in NameMap.load(MAP).rules]


def test_the_map_does_what_diffusers_converter_does():
    """Every Diffusers tensor from the official key the converter takes it from, whole (715 renames)."""
    truth = json.loads(TRUTH.read_text())["targets"]
    official = KeysFileSource(OFFICIAL)
    plan = NameMap.load(MAP).plan(official.keys())
    assert not plan.unmatched and not plan.dropped
    made = {op.target: op.sources for op in plan.ops}
    assert made == {k: tuple(p[0] for p in v["pieces"]) for k, v in truth.items()}
    shapes, target = official.shapes(), KeysFileSource(DIFFUSERS).shapes()
    assert {op.target: tuple(op.target_shape(shapes)) for op in plan.ops} == target
