"""Shipped target layouts: the Diffusers format of a family's known component configs, as data.

`port convert` checks every conversion strictly against the Diffusers/transformers models it targets
(their state-dict keys and shapes, keep-in-fp32 lists, config files). Building those models means
importing diffusers and transformers: ~8 s of CPU on a 2-core machine, more than copying a 5.7 GB DiT.
For the component configs of the published releases (Wan2.1-T2V 1.3B and 14B: DiT, VAE, umT5-xxl,
scheduler) and of the embedded tiny release, the family ships the same facts in ``layouts.json``:

- written by ``python -m vidport.porting.layouts --write`` from the installed diffusers/transformers (the
  versions are recorded in the file), never by hand;
- checked by ``tests/test_layouts.py``: every entry is rebuilt with the installed libraries and
  compared, and the real presets' shapes are compared with the key listings of the published
  Diffusers repos (``runtime/models/wan/reference``).

A config not in the file (a fine-tune with other dimensions, a new variant) is built from the
libraries as before (and memoised, ``porting.convert.TargetCache``); ``port convert --targets
libraries`` always builds from the libraries.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# the dtypes a converted component whose config file records its dtype (the release format's
# CONFIG_DTYPE_COMPONENT, e.g. a transformers text encoder) can end up in
CONFIG_DTYPES = ("BF16", "F16", "F32")
META = ("about", "generated_with")  # the file's own fields; every other key is a component


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@dataclass
class Layout:
    """The target side of one conversion, read from the shipped file."""

    targets: dict[str, tuple[dict[str, tuple[int, ...]], str, tuple[str, ...]]]  # as a format's build_targets
    _files: dict[str, dict]  # component -> its entry's files (the config-dtype component's: per dtype)
    versions: dict[str, str]
    origin: str
    config_dtype_component: str

    def files(self, config_dtype: str) -> dict[str, str]:
        """Every config file but model_index.json."""
        out: dict[str, str] = {}
        for comp, files in self._files.items():
            out.update(files[config_dtype] if comp == self.config_dtype_component else files)
        return out


def layouts_path(fam) -> Path:
    return fam.layouts


def load(fam) -> dict | None:
    try:
        return json.loads(layouts_path(fam).read_text())
    except (OSError, ValueError):
        return None


def lookup(fam, cfgs: dict[str, dict], data: dict | None = None) -> Layout | None:
    """The shipped layout of these target configs (the release format's ``target_configs``), or None when
    any component's config is not in the file."""
    from vidport.porting.convert import release_format

    data = load(fam) if data is None else data
    if not data:
        return None
    fmt = release_format(fam)
    entries = {}
    try:
        for comp in cfgs:
            want = _canonical(cfgs[comp])
            entry = next((e for e in data.get(comp, []) if _canonical(e["config"]) == want), None)
            if entry is None:
                return None
            entries[comp] = entry
        targets = {c: ({k: tuple(v) for k, v in entries[c]["shapes"].items()}, str(entries[c]["stem"]),
                       tuple(entries[c]["keep_in_fp32"])) for c in fmt.COMPONENTS}
        versions = {d: str(data["generated_with"][d]) for d in ("diffusers", "transformers")}
        files = {c: dict(e["files"]) for c, e in entries.items()}
    except (KeyError, TypeError, AttributeError, ValueError):  # a damaged file: build from the libraries
        return None
    rel = _repo_relative(fam.layouts)
    origin = f"{rel} (written with diffusers {versions['diffusers']}, transformers {versions['transformers']})"
    return Layout(targets, files, versions, origin, fmt.CONFIG_DTYPE_COMPONENT)


def _repo_relative(path: Path) -> str:
    """The path as the repository spells it (runtime/models/...), in a clone and in an installed wheel."""
    import vidport.runtime

    return Path(path).relative_to(Path(vidport.runtime.__file__).parent.parent).as_posix()


# ----------------------------------------------------------------------------------------------
# Writing the file from the libraries
# ----------------------------------------------------------------------------------------------
def known_configs(fam) -> dict[str, dict[str, dict]]:
    """The target configs of the family's known releases: {preset: configs}."""
    from vidport.porting.convert import release_format

    return release_format(fam).known_configs()


def build(fam) -> dict:
    """The file's contents, built through diffusers/transformers for every known config."""
    from vidport.porting.convert import release_format
    from vidport.porting.provenance import installed_version

    fmt = release_format(fam)

    data: dict = {
        "about": "Generated by `python -m vidport.porting.layouts --write`; checked by tests/test_layouts.py. "
                 "Per component config: the Diffusers/transformers state-dict shapes, keep-in-fp32 list and "
                 "config file(s).",
        "generated_with": {d: installed_version(d) for d in ("diffusers", "transformers")},
    }
    seen: dict[str, set[str]] = {}
    for cfgs in known_configs(fam).values():
        targets, component_files = fmt.build_targets(cfgs)
        files = {dtype: component_files(dtype) for dtype in CONFIG_DTYPES}
        for comp in cfgs:
            key = _canonical(cfgs[comp])
            if key in seen.setdefault(comp, set()):
                continue
            seen[comp].add(key)
            # the files in this component's folder; only one component's config records a dtype
            own = {d: {p: t for p, t in files[d].items() if p.startswith(f"{comp}/")} for d in CONFIG_DTYPES}
            entry: dict = {"config": cfgs[comp],
                           "files": own if comp == fmt.CONFIG_DTYPE_COMPONENT else own["BF16"]}
            if comp in fmt.COMPONENTS:
                shapes, stem, keep = targets[comp]
                entry.update(stem=stem, keep_in_fp32=list(keep), shapes={k: list(v) for k, v in shapes.items()})
            data.setdefault(comp, []).append(entry)
    return data


# ----------------------------------------------------------------------------------------------
# Comparing config files across library versions
# ----------------------------------------------------------------------------------------------
VERSION_FIELDS = ("_diffusers_version", "transformers_version")  # which library version wrote a config file


def _as_library_reads(config: dict) -> dict:
    """A config as the installed library loads it: a diffusers class (``_class_name``) takes the file's
    fields over its init defaults; a transformers model type (``model_type``) builds its config class
    from the file, which also fills fields derived from others. Anything else is taken as it is."""
    import inspect

    if "_class_name" in config:
        import diffusers

        cls = getattr(diffusers, config["_class_name"], None)
        if cls is None:
            return config
        params = inspect.signature(cls.__init__).parameters.values()
        return {**{p.name: p.default for p in params if p.default is not inspect.Parameter.empty}, **config}
    if "model_type" in config:
        from transformers import CONFIG_MAPPING

        if config["model_type"] not in CONFIG_MAPPING:  # a model type this transformers does not know
            return config
        return CONFIG_MAPPING[config["model_type"]].from_dict(config).to_dict()
    return config


def config_view(text: str) -> dict:
    """A JSON config file as the installed library reads it, without the version fields. Two files with
    equal views load the same."""
    return {k: v for k, v in _as_library_reads(json.loads(text)).items() if k not in VERSION_FIELDS}


def _model_source(config: dict) -> str | None:
    """The source text of every class the config's model is built from (the class named by
    ``_class_name`` / ``architectures``, built on the meta device, and its submodules' classes), or None
    when the config names no class the installed libraries have."""
    import inspect

    import torch

    if "_class_name" in config:
        import diffusers as lib

        name = config["_class_name"]
    elif config.get("architectures") and "model_type" in config:
        import transformers as lib

        name = config["architectures"][0]
    else:
        return None
    cls = getattr(lib, name, None)
    if cls is None:
        return None
    classes = set(cls.__mro__)
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        with torch.device("meta"):
            if lib.__name__ == "diffusers":
                model = cls.from_config(config)
            else:
                from transformers import CONFIG_MAPPING

                model = cls(CONFIG_MAPPING[config["model_type"]].from_dict(config))
        classes |= {c for m in model.modules() for c in type(m).__mro__}
    owners = (lib.__name__ + ".",)
    return "\n".join(inspect.getsource(c) for c in classes if c.__module__.startswith(owners))


def config_drift(have: str, want: str) -> tuple[list[str], list[str]]:
    """How a config file ``have`` (shipped) differs from ``want`` (rebuilt with the installed libraries):
    (real differences, harmless ones). A field is harmless when loading ``have`` gives the library the
    same value (its default, or one derived from other fields), or when no class the model is built from
    reads it (a decoder-only field in an encoder's config); any other added, removed or changed field is
    real."""
    a, b = json.loads(have), json.loads(want)
    a = {k: v for k, v in a.items() if k not in VERSION_FIELDS}
    b = {k: v for k, v in b.items() if k not in VERSION_FIELDS}
    va, vb = config_view(have), config_view(want)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
    source = _model_source(b) if any(va.get(k, _MISSING) != vb.get(k, _MISSING) for k in changed) else None
    real, harmless = [], []
    for key in changed:
        if va.get(key, _MISSING) == vb.get(key, _MISSING):
            harmless.append(f"{key}={json.dumps(b.get(key, a.get(key)))} (loads the same)")
        elif key in b and source is not None and not re.search(rf"\b{re.escape(key)}\b", source):
            owner = b.get("_class_name") or b["architectures"][0]
            harmless.append(f"{key}={json.dumps(b[key])} (read by no class of {owner})")
        else:
            real.append(f"{key}: {json.dumps(a.get(key, '<absent>'))} -> {json.dumps(b.get(key, '<absent>'))}")
    return real, harmless


_MISSING = object()


def compare(shipped: dict, rebuilt: dict) -> tuple[list[str], list[str]]:
    """The shipped file's contents against a rebuild with the installed libraries: (real differences,
    harmless ones), each a line naming the component, the entry and the field. Shapes, keep-in-fp32 lists,
    weight-file stems and the set of configs must be equal; config files may differ harmlessly only by
    the writer's version fields and by defaulted fields a newer library adds (``config_drift``)."""
    real, harmless = [], []
    for comp in [k for k in {**shipped, **rebuilt} if k not in META]:
        have, want = shipped.get(comp, []), rebuilt.get(comp, [])
        if [e["config"] for e in have] != [e["config"] for e in want]:
            real.append(f"{comp}: the known configs differ")
            continue
        for i, (h, w) in enumerate(zip(have, want)):
            for field in ("stem", "keep_in_fp32", "shapes"):
                if h.get(field) != w.get(field):
                    real.append(f"{comp}[{i}] {field} differs")
            hf, wf = h["files"], w["files"]
            pairs = [(f"{d}/{p}", hf.get(d, {}).get(p), t) for d, fs in wf.items() for p, t in fs.items()] \
                if all(isinstance(v, dict) for v in wf.values()) else [(p, hf.get(p), t) for p, t in wf.items()]
            for name, old, new in pairs:
                if old is None:
                    real.append(f"{comp}[{i}] {name}: not in the shipped file")
                    continue
                r, ok = config_drift(old, new)
                real += [f"{comp}[{i}] {name}: {x}" for x in r]
                harmless += [f"{comp}[{i}] {name}: {x}" for x in ok]
    return real, sorted(set(harmless))


def dumps(data: dict) -> str:
    """JSON, one shape (and any other list of numbers) per line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[[-\d,\s]*\]", lambda m: json.dumps(json.loads(m.group())), text) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from vidport.families import families, get_family

    ap = argparse.ArgumentParser(prog="python -m vidport.porting.layouts", description=__doc__.splitlines()[0])
    ap.add_argument("--family", default=None, help="one registered family [default: every one]")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the families' layouts.json")
    mode.add_argument("--check", action="store_true", help="exit 1 if a layouts.json differs from a rebuild")
    args = ap.parse_args(argv)
    chosen = [get_family(args.family)] if args.family else families()
    return max(_write_or_check(fam, args.write) for fam in chosen)


def _write_or_check(fam, write: bool) -> int:
    text = dumps(build(fam))
    path = layouts_path(fam)
    if write:
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    current = path.read_text() if path.is_file() else ""
    if current == text:
        print(f"{path} is current")
        return 0
    real, harmless = compare(load(fam) or {}, json.loads(text))
    for line in harmless:
        print(f"harmless: {line}")
    if real:
        for line in real:
            print(f"differs: {line}", file=sys.stderr)
        print(f"{path} is out of date with the installed diffusers/transformers; rewrite it with "
              f"`python -m vidport.porting.layouts --write --family {fam.name}`", file=sys.stderr)
        return 1
    print(f"{path} loads the same with the installed libraries (only their version fields or defaulted "
          f"fields differ)")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
