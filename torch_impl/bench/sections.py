"""The registry of benchmark sections, in the order they run and print.

A section is a module with `run(options) -> result` (what the JSON keeps under its name),
`print_table(result)` and `figure(report) -> matplotlib Figure`; `CPU_ONLY = True` leaves it out
of a GPU run unless asked for. Adding a section is one module and one line here.
"""

from __future__ import annotations

from types import ModuleType

from torch_impl.bench import adamw, attention, compile_block, numpy_step, roofline, train

SECTIONS: dict[str, ModuleType] = {
    "train": train,
    "attention": attention,
    "adamw": adamw,
    "compile": compile_block,
    "numpy": numpy_step,
    "roofline": roofline,
}


def default_sections(device_type: str) -> list[str]:
    """Every section, but the CPU-only ones on a GPU."""
    return [
        name
        for name, module in SECTIONS.items()
        if device_type == "cpu" or not getattr(module, "CPU_ONLY", False)
    ]
