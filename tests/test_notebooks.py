"""Every notebook runs top to bottom and (re)writes exactly the figures it declares.

Each notebook lists its figures in its metadata ("figures"); executing it here must write each
of them into figures/ during this run. The committed notebooks keep their own saved outputs:
this test executes a copy in memory and does not write the notebook back.
"""

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install jupyter")
nbclient = pytest.importorskip("nbclient", reason="pip install jupyter")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


EXPECTED = [
    "01_attention_scaling",
    "02_residual_init",
    "03_weight_decay_groups",
    "04_flash_attention",
    "05_fused_adamw",
    "06_flops_and_mfu",
    "07_cross_check",
]


def test_one_notebook_per_idea():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_its_figures(path):
    notebook = nbformat.read(path, as_version=4)
    figures = notebook.metadata.get("figures")
    assert figures, f"{path.name} declares no figures in its metadata"
    assert all(name.startswith(path.stem[:3]) for name in figures)  # "01_..." for 01_*.ipynb
    started = time.time()
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    for name in figures:
        figure = REPO / "figures" / name
        assert figure.exists(), f"{path.name} did not write figures/{name}"
        assert figure.stat().st_mtime >= started - 1, f"figures/{name} is not from this run"
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot shown inline"
    saved = nbformat.read(path, as_version=4)  # the committed file carries its plots too
    saved_outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in saved_outputs), "saved without outputs"
