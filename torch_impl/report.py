"""How the project's measurements are reported: the device and versions they ran on, tables for
the terminal, JSON files under results/ and the titles of their figures.

Shared, deliberately, by the benchmarks (`python -m torch_impl.bench`) and the GPU cross-check
(`python -m torch_impl.gpu_cross_check`): a saved result names its device, versions and date,
so a file measured on another machine reads and draws the same here.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ref_numpy.data import REPO_ROOT
from ref_numpy.errors import UserError

RESULTS_DIR = REPO_ROOT / "results"
FIGURES_DIR = REPO_ROOT / "figures"


# ----------------------------------------------------------------------------- where it ran
def device_name(device: torch.device) -> str:
    """The GPU's name as torch reports it, or the CPU's model name (Linux), or its architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def device_label(device: torch.device) -> str:
    """A file-name-safe label: "cpu", or the GPU's name ("nvidia_h100_80gb_hbm3")."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", device_name(device).lower()).strip("_")


def environment(device: torch.device) -> dict:
    """Device, versions and date: what a saved result needs to be read later."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device_name(device),
        "device_type": device.type,
        "label": device_label(device),
        "cpu_threads": torch.get_num_threads(),
        # on a shared machine, how busy it was: other processes stall torch's CPU threads
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
        },
    }


# ----------------------------------------------------------------------------- files
def save_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def saved_results(results_dir: Path, pattern: str) -> list[tuple[Path, dict]]:
    """Every saved result matching `pattern` in `results_dir` and in the GPU report's folders
    (`gpu_report_<device>/`), read: (path, report) pairs, files that are not JSON objects
    skipped."""
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob(pattern)) + sorted(results_dir.glob(f"gpu_report_*/{pattern}"))
    found = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not a result of ours
        if isinstance(report, dict):
            found.append((path, report))
    return found


def load_report(path: Path, program: str) -> dict:
    """A result saved by `program` (its "benchmark" field); one-line errors otherwise."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--plot {path}: cannot read a saved result ({error})") from None
    if not isinstance(report, dict) or report.get("benchmark") != program:
        raise UserError(f"--plot {path}: not a file written by {program}")
    return report


# ----------------------------------------------------------------------------- text and figures
def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns (the first left-aligned), each as wide as its widest cell."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mib(n_bytes: int | None) -> str:
    """Bytes as MiB for a table cell; empty where nothing was measured."""
    return "" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def figure_title(report: dict, what: str) -> str:
    """`what`, then where and when it was measured."""
    where = report["device"]
    if report["device_type"] == "cpu":
        where += f" ({report['cpu_threads']} threads)"
    return f"{what}\n{where}, torch {report['versions']['torch']}, {report['date']}"
