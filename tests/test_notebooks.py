"""Execute the notebooks in fast mode; their last cell asserts their key results.

Each notebook in ``notebooks/`` reads ``NUMPYRO_EBM_FAST=1`` and shrinks its runs; the committed
``.ipynb`` files hold the outputs of a full run. A failing assert (or any error) in a cell fails
the test. The kernel is this interpreter (``sys.executable``), through a kernelspec written to a
temporary directory, so the test runs in a fresh virtual environment where only
``pip install -e ".[test]"`` was done, whatever kernels Jupyter knows about elsewhere.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# A whole fast-mode notebook must finish in under 2 minutes on a quiet machine; the per-cell
# limit only stops a hung cell, with room for a loaded CI runner (compilation dominates).
CELL_TIMEOUT_S = 300

if not NOTEBOOKS:  # pragma: no cover - the repository always has notebooks
    pytest.skip("no notebooks to run", allow_module_level=True)


def _ids(paths):
    return [path.stem for path in paths]


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
    """A kernelspec ``python3`` that runs ipykernel on this interpreter, and only that one."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / "python3")
    manager = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert manager.get_kernel_spec("python3").argv[0] == sys.executable
    return manager


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_fast_mode(path, kernel_spec_manager, monkeypatch, tmp_path):
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    monkeypatch.setenv("NUMPYRO_EBM_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=kernel_spec_manager)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        # Run where the notebook lives, as a reader would; notebooks write only to temporary
        # directories of their own.
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    # The client shuts down a kernel manager it was given only when told to: otherwise the
    # kernel process and the client's heartbeat thread outlive the test.
    client.execute(cleanup_kc=True)
    seconds = time.perf_counter() - start
    print(f"{path.name}: fast mode in {seconds:.0f} s")
    assert not manager.has_kernel, "the notebook's kernel outlived its run"
    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "fast mode: True" in outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_executed_in_full_mode(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, "a notebook without code"
    assert all(cell.execution_count for cell in code_cells), "commit the executed notebook"
    outputs = [output for cell in code_cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "fast mode: False" in text, "commit the outputs of a full run, not of a fast one"
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_one_title(path):
    # The title is the docs menu entry: one H1, in the first cell.
    notebook = nbformat.read(path, as_version=4)
    # Fenced code blocks may hold "# comments": leave them out.
    markdown = [
        re.sub(r"^```.*?^```", "", cell.source, flags=re.DOTALL | re.MULTILINE)
        for cell in notebook.cells
        if cell.cell_type == "markdown"
    ]
    titles = [line for source in markdown for line in source.splitlines() if line.startswith("# ")]
    assert len(titles) == 1, titles
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_matches_its_percent_script(path):
    # The notebooks are authored as jupytext percent scripts next to them; both are committed
    # and must hold the same cells (`jupytext --sync notebooks/*.py` updates the .ipynb).
    script = path.with_suffix(".py")
    if not script.exists():
        pytest.skip(f"no {script.name}")
    from_script = jupytext.read(script)
    committed = nbformat.read(path, as_version=4)

    def cells(notebook):
        return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]

    assert cells(from_script) == cells(committed), f"run `jupytext --sync {script}`"
