#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the offline CPU demo. Extra arguments go to `selfcorrect demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/selfcorrect demo "$@"
