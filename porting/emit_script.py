"""`port convert --emit-script`: a standalone Python script (needs only torch) that performs the same
conversion as `port convert`, with the name maps and the target key/shape tables inlined.

The script is a second, independent implementation of the map semantics and of the safetensors
writer (it shares no code with vidport), so a test comparing its output byte for byte with
`port convert`'s checks both.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidport.porting.plan import ConversionPlan, _tensor_table
from vidport.porting.provenance import installed_version

TEMPLATE = r'''#!/usr/bin/env python3
"""Convert an official __FAMILY__ release into a Diffusers-format repo (the same bytes as `port convert`).

Emitted by vidport __VERSION__ (`port convert --emit-script`). Needs only Python 3.10+ and torch
(not vidport, diffusers, transformers, safetensors or numpy).

    python __NAME__ [SOURCE] [OUT] [--force]

Defaults: SOURCE=__SOURCE__  OUT=__OUT__
The name maps are inlined below (MAPS): ordered regex rules, the first match decides a source key's
fate; `drop` = unused on purpose; `merge`/`split` concatenate/chunk along `dim`; `tie` feeds one source
tensor to several targets. Every source key must match a rule and every target key of the Diffusers
models (TARGETS) must be written once with its shape, or nothing is written.
"""

import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import sys

import torch

DTYPE = __DTYPE__  # keep | bf16 | fp16 | fp32
MAX_SHARD_SIZE = __MAX_SHARD_SIZE__
COMPONENTS = __COMPONENTS__
MAPS = {
__MAPS__}
TARGETS = json.loads(__TARGETS__)  # component -> [[key, shape], ...] of the Diffusers model
FILES = json.loads(__FILES__)  # config files written verbatim
COPIES = json.loads(__COPIES__)  # output path -> path in the release

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
CASTS = {"keep": None, "bf16": "BF16", "fp16": "F16", "fp32": "F32"}


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def raw(t):
    """The bytes of a contiguous CPU tensor as a writable memoryview, without numpy."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B") if n else memoryview(b"")


# --- reading: one tensor at a time -------------------------------------------------------------
class Safetensors:
    def __init__(self, paths):
        self.where, self.meta = {}, {}
        for path in paths:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            for k, v in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                s, e = v["data_offsets"]
                self.where[k] = (path, 8 + n + s, e - s)
                self.meta[k] = (tuple(v["shape"]), v["dtype"])

    def get(self, name):
        path, offset, nbytes = self.where[name]
        shape, dtype = self.meta[name]
        out = torch.empty(shape, dtype=ST_DTYPES[dtype])
        if nbytes:
            with open(path, "rb") as f:
                f.seek(offset)
                f.readinto(raw(out))
        return out


class Pickle:
    def __init__(self, path):
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        self.sd = sd
        self.meta = {k: (tuple(v.shape), ST_NAMES[v.dtype]) for k, v in sd.items()}

    def get(self, name):
        return self.sd[name]


def open_source(path):
    if path.endswith(".safetensors.index.json"):
        with open(path) as f:
            shards = list(dict.fromkeys(json.load(f)["weight_map"].values()))
        return Safetensors([os.path.join(os.path.dirname(path), s) for s in shards])
    if path.endswith(".safetensors"):
        return Safetensors([path])
    return Pickle(path)


# --- the name map -----------------------------------------------------------------------------
def parse_map(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        opts = dict(o.split("=", 1) for o in f[4:])
        rules.append({"kind": f[0], "rx": re.compile(f[1]), "rep": f[3].split(",") if len(f) > 3 else [],
                      "parts": opts["parts"].split(",") if "parts" in opts else [], "dim": int(opts.get("dim", 0)),
                      "shape": [int(x) for x in opts["shape"].split(",")] if "shape" in opts else None,
                      "sizes": [int(x) for x in opts["sizes"].split(",")] if "sizes" in opts else None,
                      "perm": [int(x) for x in opts["perm"].split(",")] if "perm" in opts else None})
    return rules


def plan(rules, keys):
    """-> ops [(target, sources, kind, dim, index, nparts, shape)], unmatched keys"""
    ops, unmatched, merges = [], [], {}
    for key in keys:
        hit = next(((r, m) for r in rules for m in [r["rx"].match(key)] if m), None)
        if hit is None:
            unmatched.append(key)
            continue
        r, m = hit
        if r["kind"] == "drop":
            continue
        if r["kind"] in ("rename", "reshape"):  # a rename's perm= rides in the index slot
            ops.append([m.expand(r["rep"][0]), [key], r["kind"], 0, r["perm"] or 0, 1, r["shape"]])
        elif r["kind"] == "tie":
            ops += [[m.expand(rep), [key], "tie", 0, 0, 1, None] for rep in r["rep"]]
        elif r["kind"] == "split":
            for i, part in enumerate(r["parts"]):
                ops.append([m.expand(r["rep"][0].replace("{part}", part)), [key], "split", r["dim"], i,
                            r["sizes"] or len(r["parts"]), None])
        else:  # merge: placed where its first part appears, sources in parts order
            target = m.expand(r["rep"][0])
            if target not in merges:
                merges[target] = (r, {})
                ops.append([target, None, "merge", r["dim"], 0, 1, None])
            merges[target][1][m.group("part")] = key
    for op in ops:
        if op[2] == "merge":
            r, found = merges[op[0]]
            if set(found) != set(r["parts"]):
                fail(f"merge into {op[0]} lacks parts {sorted(set(r['parts']) - set(found))}")
            op[1] = [found[p] for p in r["parts"]]
    return ops, unmatched


def compute(op, get):
    target, sources, kind, dim, index, nparts, shape = op
    if kind == "merge":
        return torch.cat([get(s) for s in sources], dim=dim)
    t = get(sources[0])
    if kind == "split":  # nparts: a count of equal parts, or the list of unequal sizes
        parts = t.split(nparts, dim=dim) if isinstance(nparts, list) else t.chunk(nparts, dim=dim)
        return parts[index].contiguous()
    if kind == "reshape":
        return t.reshape(shape)
    if isinstance(index, list):  # rename with reordered rows: equal dim-0 chunks in this order
        chunks = t.chunk(len(index), dim=0)
        return torch.cat([chunks[i] for i in index], dim=0)
    return t


def out_shape(op, meta):
    target, sources, kind, dim, index, nparts, shape = op
    shapes = [list(meta[s][0]) for s in sources]
    out = list(shapes[0])
    if kind == "merge":
        out[dim] = sum(s[dim] for s in shapes)
    elif kind == "split":
        out[dim] = nparts[index] if isinstance(nparts, list) else out[dim] // nparts
    elif kind == "reshape":
        out = list(shape)
    return out


def out_dtype(name, src, keep):
    cast = CASTS[DTYPE]
    s = ST_DTYPES[src]
    if cast is None or not s.is_floating_point or src == cast:
        return src
    kept = "*" in keep or any(k in name.split(".") for k in keep)
    if kept and s.itemsize > ST_DTYPES[cast].itemsize:
        return src
    return cast


def nbytes(dtype, shape):
    n = ST_DTYPES[dtype].itemsize
    for d in shape:
        n *= d
    return n


# --- writing ------------------------------------------------------------------------------------
def header(entries):
    h, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in entries:
        size = nbytes(dtype, shape)
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + size]}
        off += size
    raw = json.dumps(h, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_component(comp, src, ops, folder):
    os.makedirs(folder, exist_ok=True)
    keep = comp["keep_fp32"]
    entries = []
    for op in ops:
        src_dtype = src.meta[op[1][0]][1]
        entries.append((op, out_dtype(op[0], src_dtype, keep), out_shape(op, src.meta)))
    shards, size = [[]], 0
    for e in entries:
        b = nbytes(e[1], e[2])
        if shards[-1] and size + b > MAX_SHARD_SIZE:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += b
    stem = comp["stem"]
    names = [f"{stem}.safetensors"] if len(shards) == 1 else \
        [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(header([(op[0], d, s) for op, d, s in shard]))
            for op, dtype, shape in shard:
                t = compute(op, src.get).to(ST_DTYPES[dtype]).contiguous()
                f.write(raw(t))
                weight_map[op[0]] = fname
                total += nbytes(dtype, shape)
            f.flush()
            os.fsync(f.fileno())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(folder, f"{stem}.safetensors.index.json"), "w") as f:
            f.write(json.dumps(index, indent=2) + "\n")
    print(f"{comp['name']}: {len(entries)} tensors, {total} bytes, {len(shards)} file(s)", file=sys.stderr)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default=__SOURCE__, metavar="SOURCE", help="the official release folder")
    ap.add_argument("out", nargs="?", default=__OUT__, metavar="OUT", help="the Diffusers-format repo to write")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    release, force = args.source, args.force
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not force:
        fail(f"{out} already exists; pass --force to replace it")
    # plan and check everything before writing
    work = []
    for comp in COMPONENTS:
        path = os.path.join(release, comp["source"])
        if not os.path.isfile(path):
            fail(f"{release}: missing {comp['source']}")
        src = open_source(path)
        if comp.get("prefix"):  # one component of a single-file release: the keys under its prefix
            src.meta = {k: v for k, v in src.meta.items() if k.startswith(comp["prefix"])}
            if not src.meta:
                fail(f"{path}: no tensors under the key prefix {comp['prefix']!r}")
        ops, unmatched = plan(parse_map(MAPS[comp["name"]]), list(src.meta))
        if unmatched:
            fail(f"{comp['name']}: {len(unmatched)} source keys match no rule, e.g. {unmatched[:3]}")
        want = {k: list(s) for k, s in TARGETS[comp["name"]]}
        got = {op[0]: out_shape(op, src.meta) for op in ops}
        if len(got) != len(ops) or got != want:
            bad = sorted(set(got) ^ set(want)) or [k for k in got if got[k] != want[k]]
            fail(f"{comp['name']}: the map does not produce the Diffusers model's keys/shapes, e.g. {bad[:3]}")
        work.append((comp, src, ops))
    tmp = os.path.join(os.path.dirname(out), "." + os.path.basename(out) + f".script-tmp-{os.getpid()}")
    os.makedirs(tmp)
    try:
        for comp, src, ops in work:
            write_component(comp, src, ops, os.path.join(tmp, comp["name"]))
        for rel, text in FILES.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)) or tmp, exist_ok=True)
            with open(os.path.join(tmp, rel), "w", encoding="utf-8") as f:
                f.write(text)
        for rel, src_rel in COPIES.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(release, src_rel), os.path.join(tmp, rel))
        sources = sorted({c["source"] for c in COMPONENTS} | set(COPIES.values()))
        record = {"converted_by": "standalone script emitted by vidport __VERSION__", "dtype": DTYPE,
                  "source": [{"path": p, "sha256": sha256(os.path.join(release, p))} for p in sources],
                  "maps": MAPS}
        with open(os.path.join(tmp, "conversion.json"), "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        if os.path.exists(out):
            old = out + f".old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def render_script(plan: ConversionPlan, out: str | Path, name: str = "convert.py") -> str:
    """The standalone script's source for a planned conversion."""
    vidport_version = installed_version("vidport")
    release = plan.release.resolve()
    release = release if release.is_dir() else release.parent  # a release given as its single file
    components, targets, maps = [], {}, []
    for c in plan.components:
        src = c.source.files()[0].resolve()
        prefix = getattr(c.source, "prefix", None)
        components.append({"name": c.name, "source": src.relative_to(release).as_posix(), "stem": c.weights_stem,
                           "keep_fp32": list(c.keep_fp32), **({"prefix": prefix} if prefix else {})})
        targets[c.name] = [[k, list(s)] for k, s in _tensor_table(c).items()]
        text = c.name_map.dumps()
        maps.append(f'    {c.name!r}: r"""\n{text}""",\n' if '"""' not in text and not text.endswith("\\")
                    else f"    {c.name!r}: {text!r},\n")
    copies = {rel: p.resolve().relative_to(release).as_posix() for rel, p in plan.copies.items()}
    subs = {
        "__FAMILY__": plan.family,
        "__VERSION__": vidport_version,
        "__NAME__": name,
        "__DTYPE__": repr(plan.dtype),
        "__MAX_SHARD_SIZE__": repr(plan.max_shard_size),
        "__COMPONENTS__": json.dumps(components, indent=4),
        "__MAPS__": "".join(maps),
        "__TARGETS__": repr(json.dumps(targets, separators=(",", ":"))),
        "__FILES__": repr(json.dumps(plan.files, indent=1)),
        "__COPIES__": repr(json.dumps(copies, indent=1)),
        "__SOURCE__": repr(str(plan.release if plan.release.is_dir() else plan.release.parent)),
        "__OUT__": repr(str(out)),
    }
    text = TEMPLATE
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


def write_script(plan: ConversionPlan, path: str | Path, out: str | Path) -> None:
    path = Path(path)
    path.write_text(render_script(plan, out, name=path.name))
    path.chmod(0o755)
