"""Speed figures a user can believe: an MFU never above 100%, and a warning on a loaded machine."""

from ref_numpy.train.machine import MeasuredPeak, load_warning


def sequence(*values):
    it = iter(values)
    return lambda: next(it)


def test_an_mfu_above_100_percent_re_measures_the_ceiling():
    # measured at start under load (1 TFLOP/s); quiet again it reaches 3
    peak = MeasuredPeak(sequence(3e12), first=1e12, warmup_steps=100)
    assert peak.mfu_of(0.5e12) == 0.5
    assert peak.mfu_of(1.5e12) == 0.5  # not 150%: measured again, against 3 TFLOP/s
    assert peak.peak == 3e12 and not peak.unreliable


def test_an_mfu_still_above_100_percent_is_not_reported(capsys):
    peak = MeasuredPeak(sequence(1.1e12), first=1e12, warmup_steps=100)
    assert peak.mfu_of(2e12) is None
    assert peak.unreliable and "MFU is no longer shown" in capsys.readouterr().err
    assert peak.mfu_of(0.1e12) is None  # once unreliable, never shown again


def test_the_ceiling_is_measured_again_after_the_warm_up_steps():
    peak = MeasuredPeak(sequence(2e12), first=1e12, warmup_steps=3)
    results = [peak.mfu_of(0.5e12) for _ in range(4)]
    assert results == [0.5, 0.5, 0.25, 0.25]
    assert peak.measured == [1e12, 2e12]


def test_a_lower_re_measurement_keeps_the_higher_ceiling():
    peak = MeasuredPeak(sequence(0.5e12), first=1e12, warmup_steps=1)
    assert peak.mfu_of(0.5e12) == 0.5


def test_a_machine_loaded_beyond_its_cores_is_warned_about():
    assert load_warning(load=1.5, cores=2) is None
    warning = load_warning(load=3.2, cores=2)
    assert warning.startswith("warning: this machine's load (3.2) exceeds its 2 cores")
    assert "OMP_NUM_THREADS=1" in warning


def test_tf32_is_scoped_to_a_run():
    """The torch trainer turns TF32 on for its own run only: later float32 work in the same
    process (a check against a float64 reference) finds the settings as they were."""
    import pytest
    import torch

    from torch_impl.runtime import tf32_matmuls

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with tf32_matmuls(True):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
        with tf32_matmuls(False):  # the cross-check's full-float32 runs, nested
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "high"
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(RuntimeError), tf32_matmuls(True):
        raise RuntimeError("a run that fails")
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
