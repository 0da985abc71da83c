"""A model family is one folder behind one contract: generic code (everything outside
``runtime/models/<family>/``) never imports a family's modules, never names a family's classes or the
library classes a family targets, and never spells a family's name in code; it asks the registry
(``vidport.families``). Docstrings and ``help=`` texts may mention a family as an example."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vidport.families import FAMILIES, FamilySpec, families, get_family

ROOT = Path(__file__).resolve().parents[1]
FAMILY_DIRS = sorted(p for p in (ROOT / "runtime" / "models").iterdir() if (p / "family.py").is_file())
GENERIC = sorted(p for folder in ("runtime", "porting", "parity", "vidport") for p in (ROOT / folder).rglob("*.py")
                 if not any(d in p.parents for d in FAMILY_DIRS)
                 and not p.name.startswith("test_") and p.name != "conftest.py")


def _family_names() -> set[str]:
    """Classes a family folder defines or imports from diffusers/transformers (what it targets)."""
    names = set()
    for folder in FAMILY_DIRS:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("diffusers",
                                                                                              "transformers"):
                    names |= {a.name for a in node.names if a.name[:1].isupper()}
    return names


def _texts_allowed(tree: ast.AST) -> set[int]:
    """ids of string constants that are docstrings or help= texts, and the registry's own table."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "FAMILIES":
            allowed |= {id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant)}
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            allowed.add(id(node.body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            allowed |= {id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant)}
    return allowed


def _violations(path: Path, family_classes: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    allowed = _texts_allowed(tree)
    family_modules = tuple(f"vidport.runtime.models.{d.name}" for d in FAMILY_DIRS)
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} imports {a.name}" for a in node.names if a.name.startswith(family_modules)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith(family_modules) or module == "vidport.runtime.models" and node.names:
                out.append(f"{where} imports from {module}")
            out += [f"{where} imports {a.name}" for a in node.names if a.name in family_classes]
        elif isinstance(node, ast.Name) and node.id in family_classes:
            out.append(f"{where} names {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in family_classes:
            out.append(f"{where} names .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
            text = node.value
            if text.startswith(family_modules) or any(name in text for name in FAMILIES) \
                    or any(cls in text.split() or text == cls for cls in family_classes):
                out.append(f"{where} spells {text[:60]!r}")
    return out


def test_generic_code_reaches_families_only_through_the_registry():
    family_classes = _family_names()
    assert {"WanDiT", "WanPipeline", "WanTransformer3DModel"} <= family_classes  # the check can see them
    bad = [v for path in GENERIC for v in _violations(path, family_classes)]
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_family_import(tmp_path: Path):
    """A negative control: the walker flags the usual ways generic code reaches into a family."""
    probe = ROOT / "porting" / "_probe_family_import.py"
    probe.write_text("from vidport.runtime.models.wan.model import WanDiT\nx = 'wan2.1-t2v'\n"
                     "def f():\n    return WanDiT\n")
    try:
        found = _violations(probe, _family_names())
    finally:
        probe.unlink()
    assert len(found) >= 3, found


def test_every_registered_family_is_complete():
    for spec in families():
        assert isinstance(spec, FamilySpec) and spec.folder.is_dir()
        for comp, path in spec.official_to_diffusers.items():
            assert Path(path).is_file(), (spec.name, comp)
        assert Path(spec.diffusers_to_native).is_file()
        assert (ROOT / "official_weights" / spec.tiny_release).is_dir()
        for ref in (spec.build_component, spec.native_transformer, spec.parallel_plan, spec.parity_setups):
            assert callable(spec.load(ref)) or isinstance(spec.load(ref), dict), ref
        for module in (spec.release, spec.pipeline):
            assert spec.load(module) is not None


def test_an_incomplete_family_fails_at_registration():
    wan = get_family("wan2.1-t2v")
    import dataclasses

    with pytest.raises(Exception, match="incomplete: no parity_setups"):
        dataclasses.replace(wan, parity_setups="")
    with pytest.raises(Exception, match="no official->Diffusers map for component 'vae'"):
        dataclasses.replace(wan, official_to_diffusers={"transformer": "x", "text_encoder": "y"})
