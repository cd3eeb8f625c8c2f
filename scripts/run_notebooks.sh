#!/usr/bin/env bash
# The main job: install what the book needs into .venv, then execute every notebook top to bottom,
# in reading order (each chapter, then its solutions), with the reader settings. Executed copies
# (with outputs) go to out/notebooks/. Pass papermill parameters with -p, e.g.
# `bash scripts/run_notebooks.sh -p num_epochs 2`.
#
# Without a network every notebook still runs to its end: The Verdict, GPT-2's tokenizer files and
# a TinyStories excerpt ship in bundled/, and a section that needs a download it cannot make (GPT-2's
# weights) prints a line starting "SKIPPED" that says what it needed and how to provide it. The
# summary at the end lists those lines; with the files at hand (network or LLM_MIRROR) it is empty.
#
# NOTEBOOKS="a.ipynb b.ipynb" runs only those; SKIP_INSTALL=1 uses the active Python as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  [ -d .venv ] || python3 -m venv .venv
  source .venv/bin/activate
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  python -m pip install -q --no-deps -e .
  python -m ipykernel install --sys-prefix --name python3 >/dev/null
fi
default="chapters/ch02_working_with_text.ipynb chapters/ch02_working_with_text_solutions.ipynb
         chapters/ch03_attention.ipynb chapters/ch03_attention_solutions.ipynb
         chapters/ch04_gpt_model.ipynb chapters/ch04_gpt_model_solutions.ipynb
         ch05_pretraining.ipynb ch05_pretraining_solutions.ipynb
         ch06_modernizing.ipynb ch06_modernizing_solutions.ipynb ch06_appendix_engineering.ipynb"
mkdir -p out/notebooks
summary=out/notebooks/skipped.txt
: > "$summary"
for nb in ${NOTEBOOKS:-$default}; do
  echo "=== $nb"
  out="out/notebooks/$(basename "$nb")"
  papermill "$nb" "$out" --cwd "$(dirname "$nb")" "$@"
  python - "$out" "$nb" >> "$summary" <<'PY'
import json, sys
for cell in json.load(open(sys.argv[1], encoding="utf-8"))["cells"]:
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        for line in ("".join(text) if isinstance(text, list) else text).splitlines():
            if line.startswith("SKIPPED"):
                print(f"{sys.argv[2]}: {line}")
PY
done
echo "=== summary"
if [ -s "$summary" ]; then
  echo "Every notebook ran to its end, but these parts were skipped (each notebook says how to provide"
  echo "what they need):"
  cat "$summary"
else
  echo "Every notebook ran to its end; nothing was skipped."
fi
