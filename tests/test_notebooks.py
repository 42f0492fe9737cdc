"""Every notebook runs top to bottom and writes the figures it declares; every number in its prose
is printed by its own outputs.

Each notebook lists its figures in its metadata ("figures"); executing it here must write each
of them during this run, into a temporary folder (`GPT_MATH_FIGURES`): the tests never write
tracked files, so `figures/` and the notebooks' saved outputs change together, only by
`make notebooks`. This test executes a copy in memory and does not write the notebook back.
"""

import re
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
    "08_roofline",
    "09_kernel_fusion",
    "10_mixed_precision",
]


def test_one_notebook_per_idea():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_its_figures(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    figures = notebook.metadata.get("figures")
    assert figures, f"{path.name} declares no figures in its metadata"
    assert all(name.startswith(path.stem[:3]) for name in figures)  # "01_..." for 01_*.ipynb
    monkeypatch.setenv("GPT_MATH_FIGURES", str(tmp_path))  # the kernel inherits it
    started = time.time()
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    for name in figures:
        figure = tmp_path / name
        assert figure.exists(), f"{path.name} did not write {name}"
        assert figure.stat().st_mtime >= started - 1, f"{name} is not from this run"
        assert (REPO / "figures" / name).exists(), f"figures/{name} is not committed"
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot shown inline"
    saved = nbformat.read(path, as_version=4)  # the committed file carries its plots too
    saved_outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in saved_outputs), "saved without outputs"


# ----------------------------------------------------------------------------- prose numbers
# A number in a notebook's prose is a claim, and the claim must be printed by that notebook's own
# outputs (saved by the same `make notebooks` run). Not claims, so not checked: math ($...$) and
# code (`...`), which state formulas and names; heading and list numbering; link targets. The
# allow-list holds the constants of the model and of the literature that prose may name without
# a cell printing them.
NUMBER = re.compile(r"(?<![\w.\-])(-?\d(?:[\d,]*\d)?(?:\.\d+)?(?:[eE][-+]?\d+)?)(?!\w)")
ALLOWED = {
    # counts and fractions of plain arithmetic
    "0",
    "1",
    "2",
    "3",
    "4",
    "0.5",
    "100",
    # GPT-2 small / nanoGPT: init std, decay, width, context, layers and heads, head size,
    # vocabulary and its padding, Adam's betas
    "0.02",
    "0.1",
    "768",
    "1024",
    "12",
    "64",
    "50257",
    "50304",
    "0.9",
    "0.95",
    "0.99",
    # years of the papers cited
    "2017",
    "2018",
    "2019",
    "2020",
    "2022",
    "2023",
}


def prose_numbers(markdown: str) -> list[str]:
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", markdown, flags=re.S)
    text = re.sub(r"```.*?```|`[^`\n]*`", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"^\s*#+\s*\d+(\.\d+)*[.)]?\s", "", text, flags=re.M)  # heading numbers
    text = re.sub(r"^\s*\d+[.)]\s", "", text, flags=re.M)  # numbered lists
    return NUMBER.findall(text)


def normalised(number: str) -> str:
    return number.replace(",", "")


def output_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_number_in_the_prose_is_printed_by_the_notebook(path):
    notebook = nbformat.read(path, as_version=4)
    printed = {normalised(n) for n in NUMBER.findall(output_text(notebook))}
    missing = [
        number
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for number in prose_numbers(cell.source)
        if normalised(number) not in printed and normalised(number) not in ALLOWED
    ]
    assert not missing, f"{path.name}: numbers in the prose that no output prints: {missing}"


def test_the_prose_number_check_can_fail():
    markdown = "Scaled wins by 0.26 nats over 5 seeds (`n_embd = 128`, $\\sqrt{64}$).\n## 3. Next"
    assert prose_numbers(markdown) == ["0.26", "5"]
