"""Execute a notebook top to bottom with papermill, injecting small parameters."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_notebook(relpath, parameters, workdir, timeout=900):
    """Run REPO/relpath in `workdir` (downloads and outputs land there, not in the repo).

    Returns the executed notebook (nbformat node) so tests can inspect cell outputs.
    """
    import papermill as pm

    src = REPO / relpath
    out = Path(workdir) / (src.stem + ".executed.ipynb")
    return pm.execute_notebook(str(src), str(out), parameters=parameters, cwd=str(workdir),
                               kernel_name="python3", progress_bar=False,
                               execution_timeout=timeout)


def cell_text(nb):
    """All stream and text/plain outputs of an executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)
