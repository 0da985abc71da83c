"""The Diffusers layouts vidport ships (runtime/models/wan/layouts.json) against their sources of truth:
the installed diffusers/transformers models, and the key listings of the published Diffusers repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from porting import layouts
from porting.convert import _wan_target_configs, installed_version, open_streaming
from porting.sources import KeysFileSource
from runtime.models.wan import family

RELEASE = Path(__file__).resolve().parents[1] / "official_weights" / "wan2.1-t2v-tiny"
VERSION_FIELDS = ("_diffusers_version", "transformers_version")  # which library version wrote a config file


@pytest.fixture(scope="module")
def shipped() -> dict:
    data = layouts.load(family)
    assert data, f"{layouts.layouts_path(family)} is missing or not JSON"
    return data


@pytest.fixture(scope="module")
def rebuilt() -> dict:
    return layouts.build(family)  # through the installed diffusers/transformers


def _files(entry: dict, same_versions: bool) -> dict:
    def norm(text: str):
        return text if same_versions else {k: v for k, v in json.loads(text).items() if k not in VERSION_FIELDS}

    return {k: ({p: norm(t) for p, t in v.items()} if isinstance(v, dict) else norm(v))
            for k, v in entry["files"].items()}


def test_shipped_layouts_match_the_libraries(shipped: dict, rebuilt: dict):
    """Every entry rebuilt with the installed libraries: the same configs, shapes, keep-in-fp32 lists and
    config files (their version fields aside, when the installed versions are not the recorded ones)."""
    same = shipped["generated_with"] == {d: installed_version(d) for d in ("diffusers", "transformers")}
    for comp in (*layouts.WEIGHT_COMPONENTS, "scheduler"):
        assert [e["config"] for e in shipped[comp]] == [e["config"] for e in rebuilt[comp]], comp
        for have, want in zip(shipped[comp], rebuilt[comp]):
            for field in ("stem", "keep_in_fp32", "shapes"):
                assert have.get(field) == want.get(field), \
                    f"{comp} {field} differs: rewrite with python -m porting.layouts --write"
            assert _files(have, same) == _files(want, same), f"{comp} config files differ from the libraries'"
    if same:
        assert layouts.dumps(rebuilt) == layouts.layouts_path(family).read_text()


@pytest.mark.parametrize("preset, listings", [
    ("1.3b", {"transformer": "diffusers_dit_1.3b_keys.txt", "text_encoder": "transformers_umt5xxl_keys.txt"}),
    ("14b", {"transformer": "diffusers_dit_14b_keys.txt", "text_encoder": "transformers_umt5xxl_keys.txt"}),
])
def test_real_presets_match_the_published_repos(preset: str, listings: dict):
    """The real presets' shipped shapes are exactly the key listings of Wan-AI/Wan2.1-T2V-*-Diffusers
    (transformer) and of the umT5-xxl encoder in transformers' layout."""
    cfgs = layouts.known_configs(family)[preset]
    layout = layouts.lookup(family, cfgs)
    assert layout is not None
    for comp, name in listings.items():
        published = KeysFileSource(family.REFERENCE_KEYS / name).shapes()
        shapes = layout.targets[comp][0]
        # the published encoder listing has no tied copy of the embedding (transformers keeps it, tied)
        extra = set(shapes) - set(published)
        assert extra <= {"encoder.embed_tokens.weight"}, (comp, sorted(extra)[:5])
        assert {k: shapes[k] for k in published} == published, comp


def test_the_embedded_release_and_real_configs_are_shipped():
    sources = {c: open_streaming(family.official_component_file(RELEASE, c)) for c in family.COMPONENTS}
    cfgs = _wan_target_configs(family, family.read_official_config(RELEASE), "tiny", sources)
    assert layouts.lookup(family, cfgs) is not None
    for preset in ("1.3b", "14b"):
        assert layouts.lookup(family, layouts.known_configs(family)[preset]) is not None


def test_other_configs_are_not_shipped(shipped: dict):
    cfgs = layouts.known_configs(family)["1.3b"]
    wider = {**cfgs, "transformer": {**cfgs["transformer"], "num_layers": 31}}
    assert layouts.lookup(family, wider, shipped) is None
    assert layouts.lookup(family, cfgs, {**shipped, "vae": [{"config": cfgs["vae"]}]}) is None  # damaged entry
    assert layouts.lookup(family, cfgs, {}) is None
