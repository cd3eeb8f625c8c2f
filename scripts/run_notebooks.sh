#!/usr/bin/env bash
# The main job: install what the book needs into .venv, then execute every notebook top to bottom,
# in reading order (each chapter, then its solutions), with the reader settings. Executed copies (with outputs) go to out/notebooks/.
# Pass papermill parameters with -p, e.g. `bash scripts/run_notebooks.sh -p num_epochs 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
python -m ipykernel install --sys-prefix --name python3 >/dev/null
mkdir -p out/notebooks
for nb in chapters/ch02_working_with_text.ipynb chapters/ch02_working_with_text_solutions.ipynb \
          chapters/ch03_attention.ipynb chapters/ch03_attention_solutions.ipynb \
          chapters/ch04_gpt_model.ipynb chapters/ch04_gpt_model_solutions.ipynb \
          ch05_pretraining.ipynb ch05_pretraining_solutions.ipynb \
          ch06_modernizing.ipynb ch06_modernizing_solutions.ipynb ch06_appendix_engineering.ipynb; do
  [ -f "$nb" ] || { echo "skipping $nb (not written yet)"; continue; }
  echo "=== $nb"
  papermill "$nb" "out/notebooks/$(basename "$nb")" --cwd "$(dirname "$nb")" "$@"
done
