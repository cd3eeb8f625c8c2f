#!/usr/bin/env bash
# Re-execute notebooks *in place*, at their reader (CPU) settings, so the committed files carry the
# outputs and figures of a real run of the committed code; then record in each notebook the
# fingerprint of the code it ran (scripts/fingerprint.py: its code cells, the shared/ modules it
# imports, the data in bundled/). tests/notebooks/test_committed_outputs.py fails when that code changes
# afterwards, so run this after changing anything a notebook uses, then commit the notebooks.
#
# Optional arguments name the notebooks to run (default: all of them, in reading order).
# Chapter 5's GPT-2 section needs GPT-2's files: without a network or LLM_MIRROR holding them it is
# skipped (the notebook says so). `FAKE_GPT2=1` serves a random stand-in in OpenAI's exact layout
# instead (tests/support/fake_gpt2.py), which the chapter reports as "not OpenAI's weights".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  [ -d .venv ] || python3 -m venv .venv
  source .venv/bin/activate
  python -m pip install -q -r requirements.txt
  python -m ipykernel install --sys-prefix --name python3 >/dev/null
fi
export MPLBACKEND=module://matplotlib_inline.backend_inline
if [ "${FAKE_GPT2:-0}" = 1 ]; then
  stand_in="$(mktemp -d)"
  trap 'rm -rf "$stand_in"' EXIT
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python tests/support/fake_gpt2.py "$stand_in"
  export LLM_MIRROR="$stand_in${LLM_MIRROR:+:$LLM_MIRROR}"
fi
notebooks=("$@")
[ ${#notebooks[@]} -gt 0 ] || notebooks=(
  chapters/ch02_working_with_text.ipynb chapters/ch02_working_with_text_solutions.ipynb
  chapters/ch03_attention.ipynb chapters/ch03_attention_solutions.ipynb
  chapters/ch04_gpt_model.ipynb chapters/ch04_gpt_model_solutions.ipynb
  ch05_pretraining.ipynb ch05_pretraining_solutions.ipynb
  ch06_modernizing.ipynb ch06_modernizing_solutions.ipynb ch06_appendix_engineering.ipynb)
for nb in "${notebooks[@]}"; do
  echo "=== $nb"
  start=$(date +%s)
  papermill "$nb" "$nb" --cwd "$(dirname "$nb")" --kernel python3
  python scripts/fingerprint.py --record "$nb"
  echo "    $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
done
