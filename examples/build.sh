#!/bin/sh
# Rebuild every example module from its C or WAT source.
# Needs clang, wasm-ld, wasi-libc (Debian: clang lld wasi-libc) and wabt.
set -eu
cd "$(dirname "$0")"

clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--strip-all -o math.wasm math.c
clang --target=wasm32-wasi -O2 -Wl,--strip-all -o echo.wasm echo.c

for source in *.wat; do
    wat2wasm "$source" -o "${source%.wat}.wasm"
done
