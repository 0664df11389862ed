#!/bin/sh
# Compiles fractals for the image: `steward image build` / `steward up` run this
# (the image's `prepare`) and copy .build/fractals into the image.
set -eu
cd "$(dirname "$0")"
cargo build --release --quiet -p fractals
mkdir -p .build
cp "${CARGO_TARGET_DIR:-../../target}/release/fractals" .build/fractals
