"""The run log: one JSON object per line in out_dir/log.jsonl, and the loss-curve figure.

The first record of a run is its configuration; then one record per logged step (`iter`,
`loss`, `lr`, `grad_norm`, `tokens_per_second`, and `mfu` where the trainer measures it) and
one per evaluation (`iter`, `train_loss`, `val_loss`, `unigram_loss`, and
`val_bits_per_character` where the data's characters per token are known).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ref_numpy.files import append_text, atomic_write, atomic_write_bytes


class RunLog:
    """Appends one JSON object per line to out_dir/log.jsonl and keeps them for the figure."""

    def __init__(
        self, out_dir: str | Path, config: Any, resume_iter: int | None = None, active: bool = True
    ) -> None:
        """A fresh log, or with `resume_iter` the existing one cut back to the records before
        that iteration (a killed run may have logged past its last checkpoint). An inactive log
        (a data-parallel rank other than 0) writes nothing."""
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "log.jsonl"
        self.records: list[dict] = []
        self.active = active
        if not active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None and self.path.is_file():
            self.records = [r for r in self._read() if r.get("iter", -1) < resume_iter]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        header = {"config": dataclasses.asdict(config)}
        if resume_iter is not None:
            header["resumed_at"] = resume_iter
        self.write(header)

    def _read(self) -> list[dict]:
        """The records of the log; a line that does not read as one (torn or garbled by a killed
        process, even into bytes that are not UTF-8) is skipped, so it never blocks a resume."""
        records = []
        for line in self.path.read_bytes().splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self.records.append(record)
        append_text(self.path, json.dumps(record) + "\n")

    def plot(self, title: str) -> Path:
        """Training loss per iteration and train/val loss at each evaluation, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r for r in self.records if "loss" in r]
        evals = [r for r in self.records if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(
            [r["iter"] for r in steps],
            [r["loss"] for r in steps],
            lw=0.8,
            alpha=0.6,
            label="training batch",
        )
        ax.plot(
            [r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)"
        )
        ax.plot(
            [r["iter"] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)"
        )
        if evals and "unigram_loss" in evals[0]:
            ax.axhline(evals[0]["unigram_loss"], color="gray", ls="--", label="unigram baseline")
        ax.set_xlabel("iteration")
        ax.set_ylabel("cross-entropy loss (nats per character)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        try:
            atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=120))
        finally:
            plt.close(fig)
        return path
