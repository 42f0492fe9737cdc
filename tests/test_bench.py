"""torch_impl.bench: one quick run on the CPU writes every section, with the structure the README
and the figures read; the helpers count what they claim. Times are never asserted: they are
measured, and a test only checks that they are there, positive and finite."""

import json
import math
import subprocess
import sys

import pytest
import torch

from ref_numpy.roofline import GROUPS
from torch_impl.bench import command as bench
from torch_impl.bench.attention import MANUAL, SDPA_FLASH, causal_attention_flops
from torch_impl.bench.timing import interleaved_times, saved_for_backward_bytes
from torch_impl.bench.train import NANOGPT, VARIANTS

# A stand-in for a nanoGPT checkout: a model.py with nanoGPT's names (GPT, GPTConfig) and its
# configure_optimizers signature, built on this project's model. It tests the loading and the
# timing of a foreign model, not nanoGPT.
STAND_IN_MODEL = """
from ref_numpy.config import GPTConfig
from torch_impl.model import GPT as ProjectGPT


class GPT(ProjectGPT):
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return super().configure_optimizers(weight_decay, learning_rate, betas, device_type)
"""


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    checkout = root / "nanogpt"
    checkout.mkdir()
    (checkout / "model.py").write_text(STAND_IN_MODEL)
    out, figures = root / "bench.json", root / "figures"
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--nanogpt", str(checkout)]
    bench.main(argv + ["--figures", "--figures_dir", str(figures)])
    return json.loads(out.read_text()), figures, out


def test_report_names_device_versions_and_sections(quick_run):
    report, _, _ = quick_run
    assert report["device_type"] == "cpu" and report["device"]
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["cuda"] is None  # a CPU run
    assert report["date"] and report["quick"] is True
    assert report["sections"] == ["train", "attention", "adamw", "compile", "numpy", "roofline"]


def test_train_section_has_every_variant_and_nanogpt_ratio(quick_run):
    section = quick_run[0]["train"]
    variants = {v["variant"]: v for v in section["variants"]}
    assert list(variants) == [v.name for v in VARIANTS] + [NANOGPT]
    for entry in variants.values():
        assert entry["error"] is None
        assert _positive(entry["tokens_per_second"]) and _positive(entry["mfu_vs_ceiling"])
        assert entry["mfu_vs_peak"] is None  # a CPU has no datasheet peak
        assert math.isfinite(entry["last_loss"])
    assert variants["all on"]["throughput_vs_all_on"] == 1.0
    assert variants["no flash"]["attention"] == "manual"
    assert variants["no fused AdamW"]["optimizer"] == "foreach"
    assert variants["no compile"]["compiled"] is False
    assert _positive(section["all_on_over_nanogpt"])
    assert section["flops_per_token"] > 0 and _positive(section["matmul_ceiling_flops"])


def test_attention_section_times_both_paths_at_every_length(quick_run):
    section = quick_run[0]["attention"]
    rows = section["rows"]
    assert {(r["implementation"], r["T"]) for r in rows} == {
        (name, T) for name in (SDPA_FLASH, MANUAL) for T in (16, 32)
    }
    for row in rows:
        assert row["error"] is None
        assert _positive(row["forward_seconds"]) and _positive(row["forward_backward_tflops"])
        assert row["saved_for_backward_bytes"] > 0
        assert row["max_abs_diff_vs_sdpa_flash"] < 1e-5  # float32: the same attention


def test_adamw_and_numpy_sections(quick_run):
    report = quick_run[0]
    assert [run["implementation"] for run in report["adamw"]] == ["for-loop", "foreach", "fused"]
    assert all(_positive(run["effective_bandwidth_gb_s"]) for run in report["adamw"])
    numpy_section = report["numpy"]
    assert _positive(numpy_section["numpy_over_torch"])
    assert len(numpy_section["numpy_step_times"]) == len(numpy_section["torch_step_times"]) == 2


def test_compile_section_times_one_block_eager_and_compiled(quick_run):
    section = quick_run[0]["compile"]
    assert section["backend"] == "aot_eager"  # --quick: the code path, no generated kernels
    for key in ("compile_seconds", "eager_seconds", "compiled_seconds", "speedup"):
        assert _positive(section[key]), key
    assert len(section["times"]["eager"]) == len(section["times"]["compiled"]) == 2


def test_roofline_section_predicts_and_measures_every_group_and_claim(quick_run):
    section = quick_run[0]["roofline"]
    assert _positive(section["device"]["bandwidth"]) and _positive(section["gelu_rate"])
    (validation,) = section["validation"].values()  # --quick: one configuration
    assert set(validation["groups"]) == set(GROUPS)
    for group, row in validation["groups"].items():
        assert _positive(row["predicted"]) and _positive(row["measured"]), group
    assert _positive(validation["step_predicted"]) and _positive(validation["step_measured"])
    assert set(section["claims"]) == {"H100 SXM", "H200", "A100 40GB"}
    for claims in section["claims"].values():
        assert [row["T"] for row in claims["flash_attention"]] == [1024, 4096]
        assert set(claims["fused_adamw"]) == {"for_loop", "foreach", "fused"}
    cpu = section["cpu_claims"]
    assert all(_positive(row["measured_speedup"]) for row in cpu["attention"])
    assert all(_positive(run["measured_seconds"]) for run in cpu["adamw"].values())


def test_figures_are_drawn_and_redrawn_from_the_saved_file(quick_run, tmp_path):
    _, figures, out = quick_run
    sections = ("train", "attention", "adamw", "compile", "numpy", "roofline")
    names = {f"bench_cpu_quick_{s}.png" for s in sections}
    assert {p.name for p in figures.iterdir()} == names
    bench.main(["--plot", str(out), "--figures_dir", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == names


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sections", "train,speed"], "--sections"),
        (["--steps", "0"], "--steps"),
        (["--nanogpt", "/nonexistent"], "no model.py"),
        (["--sections", "adamw", "--nanogpt", "."], "train section"),
    ],
)
def test_bad_arguments_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        bench.main(["--device", "cpu", *argv])


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    not_ours = tmp_path / "other.json"
    not_ours.write_text('{"device": "x"}')
    done = subprocess.run(
        [sys.executable, "-m", "torch_impl.bench", "--plot", str(not_ours)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --plot")


def test_interleaved_times_runs_round_robin_after_warmup():
    calls = []
    times = interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        steps=2,
        warmup=1,
        device=torch.device("cpu"),
    )
    assert calls == ["a", "b"] * 3
    assert all(len(t) == 2 and all(s >= 0 for s in t) for t in times.values())


def test_saved_for_backward_bytes_counts_what_autograd_keeps():
    x = torch.randn(100, 10, requires_grad=True)
    w = torch.randn(10, 10, requires_grad=True)
    assert saved_for_backward_bytes(lambda: x * 2.0) == 0  # d(2x)/dx needs nothing
    assert saved_for_backward_bytes(lambda: x.exp()) == 100 * 10 * 4  # exp keeps its output
    assert saved_for_backward_bytes(lambda: x @ w) == (100 * 10 + 10 * 10) * 4  # both inputs


def test_causal_attention_flops_is_half_the_square_and_backward_two_and_a_half():
    forward, total = causal_attention_flops(batch=2, heads=3, T=8, head_dim=4)
    full_square = 2 * 3 * (2 * 8 * 8 * 4) * 2  # S = QK^T and O = PV, 2*T*T*d each, all heads
    assert forward == full_square / 2
    assert total == forward * (1 + 2.5)
