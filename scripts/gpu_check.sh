#!/usr/bin/env bash
# GPU evidence in one command (issue 20): opdkit on one H200 in about 8 minutes, no network.
#
#   bash scripts/gpu_check.sh --out $OUT/gpu          # on the GPU machine (BENCHMARKS.md: "GPU check")
#   bash scripts/gpu_check.sh --dry-run --out DIR     # the same code on the CPU, tiny sizes (~2 min)
#   bash scripts/gpu_check.sh --fetch-wheels          # here, with network: trl + its missing deps + liger into wheels/
#
# opdkit is used from src/ (PYTHONPATH), never installed. Wheels in wheels/ (if present) are
# installed offline into a private target (--no-index --no-deps); without them the TRL and
# Liger sections are skipped with the reason in the report.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p wheels
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d wheels trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 liger-kernel==0.8.5
    du -sh wheels
    exit 0
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "wheels/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/opdkit-gpu-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" wheels/*.whl \
        || echo "gpu_check: warning: installing wheels/ failed; TRL/Liger sections will be skipped" >&2
    export PYTHONPATH="$PYTHONPATH:$site"
fi
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec python3 benchmarks/gpu_check.py "$@"
