#!/usr/bin/env bash
# The test command (README): installs what a fresh machine lacks, fetches the test models,
# then runs every check CI runs. Needs only cargo, python3 with pip, apt, and the registries.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-models.sh
# The exact reference for GGUF loading: the same GGUFs dequantized to f32 by gguf-py.
bash scripts/fetch-models.sh --dtype f32 --out models/f32
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
# Docs: the public API's build without warnings, and no intra-doc link is broken in the
# private items' either.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p subspec
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links" cargo doc --no-deps --document-private-items -p subspec
# CUDA kernels: the committed PTX is what the pinned NVRTC makes of kernels/*.cu, and ptxas
# accepts it for sm_80 and sm_90 (installs the pinned NVRTC/ptxas wheels from PyPI).
bash scripts/check-kernels.sh
cargo test --release
# Without a GPU the CUDA parity tests skip; say so (scripts/gpu-check.sh runs them on one).
cargo test --release -q --test cuda -- --nocapture 2>&1 | grep -m1 "^SKIP" || true
# `subspec serve` against the real openai client (pinned, in its own venv; httpx pinned
# below 0.28, which dropped an argument openai 1.51 passes).
cargo build --release -p subspec-cli
python3 -m venv target/serve-venv
target/serve-venv/bin/pip install -q openai==1.51.0 httpx==0.27.2
target/serve-venv/bin/python tests/serve/test_openai.py target/release/subspec models/smollm2-135m-instruct
# The C ABI from C (also under valgrind), C++, Go and Node; installs gcc, valgrind,
# golang-go, nodejs/npm and cmake from Debian when missing.
bash scripts/test-bindings.sh
# bindings/llama.cpp against a pinned llama.cpp built from the llama-cpp-python sdist
# (cmake and c++ are installed by test-bindings.sh; the build is reused under target/).
bash scripts/test-llama-cpp.sh
