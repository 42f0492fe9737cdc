"""torch_impl.gpu_cross_check: the optimized torch runs (flash attention, fused AdamW, compile,
bf16 autocast; and float32 with TF32 off) against the NumPy float64 reference, each judged by
DESIGN.md's rule against a plain run in the same precision.

On a GPU the full check (200 steps, five seeds) must pass. Without one, the same program runs
on the CPU for 20 steps and one seed, so its code is exercised on every machine: there the
rule is checked too, though 20 steps leave the errors far below the unit-roundoff slack.
"""

import json
import math

import pytest
import torch

from torch_impl import gpu_cross_check
from torch_impl.gpu_cross_check import RUNS, cross_check, print_report


def test_cpu_run_of_the_program_writes_a_passing_report(corpus_dir, tmp_path):
    out = tmp_path / "cross_check.json"
    argv = ["--device", "cpu", "--steps", "20", "--seeds", "0", "--data_dir", str(corpus_dir)]
    code = gpu_cross_check.main(argv + ["--out", str(out), "--figures_dir", str(tmp_path)])
    report = json.loads(out.read_text())
    assert code == 0 and report["passed"]
    runs = report["per_seed"][0]["runs"]
    assert list(runs) == ["numpy float64"] + [run.name for run in RUNS]
    for run in runs.values():
        assert len(run["losses"]) == 20 and all(math.isfinite(x) for x in run["losses"])
        assert math.isfinite(run["val_loss"])
    assert len(report["checks"]) == 6  # 2 optimized runs x 3 errors
    assert report["device_type"] == "cpu" and report["compiled"] is False
    assert (tmp_path / "gpu_cross_check_cpu.png").is_file()


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match="--seeds"):
        gpu_cross_check.main(["--device", "cpu", "--seeds", "zero"])


@pytest.mark.gpu
@pytest.mark.slow
def test_optimized_gpu_training_stays_within_the_yardstick(corpus_dir):
    report = cross_check(torch.device("cuda"), steps=200, data_dir=corpus_dir)  # 5 seeds
    print_report(report)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not failed, failed
