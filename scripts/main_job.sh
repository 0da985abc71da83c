#!/usr/bin/env bash
# vidport's main job on the embedded tiny releases of both families (CPU, no downloads), after `pip install -e .`:
# infer the official->native name map, convert the official release into a Diffusers-format repo,
# prove the port layer by layer against diffusers, and generate a short video.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==== Wan2.1 T2V (official_weights/wan2.1-t2v-tiny: separate files per component)"
RELEASE=official_weights/wan2.1-t2v-tiny
REPO=converted_weights/wan2.1-t2v-tiny
echo "== 1/4 port diff-keys: official release vs the native DiT"
port diff-keys "$RELEASE" native:wan2.1-t2v-tiny/transformer | tail -n 1
echo "== 2/4 port convert: official layout -> Diffusers-format repo"
port convert "$RELEASE" --family wan2.1-t2v --out "$REPO" --force
echo "== 3/4 port parity: native runtime vs diffusers, layer by layer, on the converted weights"
port parity wan2.1-t2v --weights "$REPO" | tail -n 1
echo "== 4/4 port generate"
port generate "$REPO" --prompt "a cat walks on the grass" --seed 0

echo "==== LTX-Video (official_weights/ltx-video-tiny: one single file, components under key prefixes)"
RELEASE=official_weights/ltx-video-tiny
REPO=converted_weights/ltx-video-tiny
# (the single file lists its keys alphabetically, so attn1/attn2 vs self/cross attention cannot be told apart in it by
# names alone: the real release's key listing, in module order, shows the inference; docs/ltx-video.md)
echo "== 1/4 port diff-keys: the real 2B release's transformer keys vs the native DiT (q/k/v merges inferred)"
port diff-keys keys:runtime/models/ltx_video/reference/official_transformer_2b_keys.txt \
  native:ltx-video-2b/transformer | tail -n 1
echo "== 2/4 port convert: official single file -> Diffusers-format repo"
port convert "$RELEASE" --family ltx-video --out "$REPO" --force
echo "== 3/4 port parity"
port parity ltx-video --weights "$REPO" | tail -n 1
echo "== 4/4 port generate"
port generate "$REPO" --prompt "a cat walks on the grass" --seed 0
