#!/usr/bin/env bash
# The main job on the bundled sample data: set up, then run `cellquant demo` into OUTDIR
# (default out/). Usage: bash scripts/demo.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/cellquant demo "${1:-out}" --overwrite
