#!/usr/bin/env bash
# Builds wc.wasm from wc.c with Debian's clang-14, wasm-ld-14 and wasi-libc
# (packages clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32, which
# scripts/setup installs).
set -euo pipefail
cd "$(dirname "$0")"
clang-14 --target=wasm32-wasi --sysroot=/usr -O2 -Wl,--strip-all -o wc.wasm wc.c
