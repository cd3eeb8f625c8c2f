#!/usr/bin/env bash
# Install what the tests need into .venv (created if missing), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k model -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -e .
python -m ipykernel install --sys-prefix --name python3 >/dev/null
python -m pytest "$@"
