"""torch_impl.bench.adamw: every implementation runs and reports positive times (never asserted
against a number: timings are measured, not tested)."""

import pytest
import torch

from torch_impl.bench import adamw
from torch_impl.bench.adamw import (
    IMPLEMENTATIONS,
    compare_adamw,
    saved_gpu_results,
    time_adamw,
)
from torch_impl.bench.common import BenchOptions


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_time_adamw_reports_positive_times(implementation):
    result = time_adamw(5_000, implementation, steps=2, warmup=1)
    assert result["n_params"] > 0
    assert result["seconds_per_step"] > 0 and len(result["step_times"]) == 2
    assert result["fused_bytes_per_param"] == 28
    assert result["effective_bandwidth_gb_s"] > 0


def test_compare_adamw_times_every_implementation():
    results = compare_adamw(5_000, steps=1, warmup=0)
    assert set(results) == set(IMPLEMENTATIONS)
    assert all(run["seconds_per_step"] > 0 for run in results.values())


def test_compare_adamw_takes_the_shapes_of_a_model():
    results = compare_adamw(None, ("fused",), steps=1, warmup=0, shapes=[(10, 20), (5,)])
    assert results["fused"]["n_params"] == 10 * 20 + 5


def test_adamw_section_gives_speedups_over_the_for_loop():
    runs = adamw.run(BenchOptions(torch.device("cpu"), quick=True, steps=1, warmup=0))
    assert [run["implementation"] for run in runs] == list(IMPLEMENTATIONS)
    assert runs[0]["speedup_over_for_loop"] == 1.0
    assert all(run["speedup_over_for_loop"] > 0 for run in runs)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation"):
        time_adamw(5_000, "triton")


def test_saved_gpu_results_reads_only_gpu_adamw_reports(tmp_path):
    (tmp_path / "gpu.json").write_text('{"device_type": "cuda", "device": "H100", "adamw": []}')
    (tmp_path / "cpu.json").write_text('{"device_type": "cpu", "adamw": []}')
    (tmp_path / "other.json").write_text('{"device": "x86_64"}')
    (tmp_path / "broken.json").write_text("{")
    reports = saved_gpu_results(tmp_path)
    assert [report["device"] for report in reports] == ["H100"]
