"""torch_impl.bench_adamw: every implementation runs and reports positive times (never asserted
against a number: timings are measured, not tested)."""

import pytest

from torch_impl.bench_adamw import IMPLEMENTATIONS, compare_adamw, saved_gpu_results, time_adamw


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
