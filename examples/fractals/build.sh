#!/bin/sh
# Compiles fractals for the image: `steward image build` / `steward up` run this
# (the image's `prepare`) and copy .build/fractals into the image. Cargo's own
# progress shows while it compiles (a bar on a terminal, a line per crate in a log).
set -eu
cd "$(dirname "$0")"
cargo build --release -p fractals
mkdir -p .build
cp "${CARGO_TARGET_DIR:-../../target}/release/fractals" .build/fractals
