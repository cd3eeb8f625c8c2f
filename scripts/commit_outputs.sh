#!/usr/bin/env bash
# Re-execute the notebooks that a CPU runs in reasonable time (chapters 2-5) *in place*, at their
# reader settings, so the committed files carry the outputs and figures of a real run of the
# committed code. Run it after changing anything a notebook uses, then commit the notebooks.
# Optional arguments name the notebooks to run (default: all four); solutions notebooks beside a
# chapter can be named too. Chapter 6 needs the TinyStories download for its reader run; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
python -m pip install -q -r requirements.txt
python -m ipykernel install --sys-prefix --name python3 >/dev/null
export MPLBACKEND=module://matplotlib_inline.backend_inline
notebooks=("$@")
[ ${#notebooks[@]} -gt 0 ] || notebooks=(chapters/ch02_working_with_text.ipynb chapters/ch03_attention.ipynb
                                        chapters/ch04_gpt_model.ipynb ch05_pretraining.ipynb)
for nb in "${notebooks[@]}"; do
  echo "=== $nb"
  start=$(date +%s)
  papermill "$nb" "$nb" --cwd "$(dirname "$nb")" --kernel python3
  echo "    $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
done
