#!/usr/bin/env bash
# vidport's main job on the embedded tiny Wan2.1 release (CPU, no downloads), after `pip install -e .`:
# infer the official->native name map, convert the official release into a Diffusers-format repo,
# prove the port layer by layer against diffusers, and generate a short video.
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE=official_weights/wan2.1-t2v-tiny
REPO=converted_weights/wan2.1-t2v-tiny

echo "== 1/4 port diff-keys: official release vs the native DiT"
port diff-keys "$RELEASE" native:wan2.1-t2v-tiny/transformer | tail -n 4
echo "== 2/4 port convert: official layout -> Diffusers-format repo"
port convert "$RELEASE" --family wan2.1-t2v --out "$REPO" --force
echo "== 3/4 port parity: native runtime vs diffusers, layer by layer, on the converted weights"
port parity wan2.1-t2v --weights "$REPO" | tail -n 1
echo "== 4/4 port generate"
port generate "$REPO" --prompt "a cat walks on the grass" --seed 0
