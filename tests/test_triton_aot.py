"""The attention kernels compiled ahead of time for Hopper (sm_90), on a machine with no GPU.

`python -m torch_impl.triton_aot` compiles every autotune configuration (three kernels and the
preprocess; bf16, fp16 and float32's one config; head dims 64 and 128; causal and not: 154) into
results/triton_sm90.json, a minute and a half on two cores. A test cannot spend that,
so it recompiles a sample, every configuration once in the cell that needs the most registers,
and holds the committed file to it: a kernel or config change that moves registers, spills or
shared memory fails here until the command is run again. The file's remaining entries are
checked for what a GPU run needs (no spills in any config the autotuner may time).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "triton", reason="the Triton kernels need: pip install -r requirements-triton.txt"
)

from torch_impl import triton_aot as aot

COMMITTED = json.loads(aot.RESULTS.read_text())
MEASURED = ("n_regs", "n_spills", "shared", "fits_shared_memory")


def sample() -> list[dict]:
    """Every autotune configuration of each kernel once, where registers run highest: bf16
    (fp16 compiles to the same counts), head dim 128, causal (the masked diagonal loop on top
    of the unmasked one); float32's one config there too, and the preprocess kernel."""
    return [
        c
        for c in aot.configurations(dtypes=("bf16",))
        if c["head_dim"] == 128 and c["causal"] in (True, None)
    ]


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """The sample compiled for sm_90 in two processes; any compilation error fails the tests."""
    return aot.compile_all(sample(), workers=2)


def test_every_configuration_is_recorded():
    """The file names exactly the configurations the module's lists give, once each, for sm_90:
    a config added or removed without running the command fails here."""
    recorded = [aot.key(c) for c in COMMITTED["configs"]]
    assert len(recorded) == len(set(recorded))
    assert set(recorded) == {aot.key(c) for c in aot.configurations()}
    assert COMMITTED["target"] == {"backend": "cuda", "arch": 90, "warp_size": 32}
    assert COMMITTED["shared_memory_limit"] == aot.SHARED_MEMORY_LIMIT


def test_no_configuration_the_autotuner_may_choose_spills(compiled):
    """A config that fits in shared memory may win the autotuner's timing: it must keep its
    tiles in registers (a spill sends them to local memory, in L1 and beyond). Checked on the
    sample just compiled, and on every entry of the file, which the next test ties to it."""
    for config in (*compiled, *COMMITTED["configs"]):
        if config["fits_shared_memory"] and config["head_dim"] <= 128:
            assert config["n_spills"] == 0, config


def test_the_sample_compiles_as_recorded(compiled):
    """Registers, spills and shared memory of the sample as the committed file has them."""
    if COMMITTED["triton"] != aot.triton.__version__:
        pytest.skip(f"the file is from Triton {COMMITTED['triton']}: its counts are that one's")
    recorded = {aot.key(c): c for c in COMMITTED["configs"]}
    for config in compiled:
        expected = recorded[aot.key(config)]
        assert {m: config[m] for m in MEASURED} == {m: expected[m] for m in MEASURED}, config


def test_the_command_writes_its_results(tmp_path, monkeypatch):
    """The command's file, for a one-config list (the preprocess kernel: quick to compile)."""
    one = [c for c in aot.configurations() if c["kernel"] == "preprocess"][:1]
    monkeypatch.setattr(aot, "configurations", lambda: one)
    out = tmp_path / "sm90.json"
    lines = []
    assert aot.main(["--out", str(out), "--workers", "1"], print_=lines.append) == 0
    written = json.loads(out.read_text())
    assert written["triton"] == aot.triton.__version__
    assert written["target"]["arch"] == 90
    (config,) = written["configs"]
    assert aot.key(config) == aot.key(one[0])
    assert config["n_regs"] > 0 and config["shared"] > 0 and config["fits_shared_memory"]
    assert lines[-1] == f"wrote {out}"
