"""The GPU report (`python -m torch_impl.gpu_report`): its CPU dry run runs every step, so the
command a rare GPU loan depends on cannot rot; steps past their cap or the budget are ended and
recorded, and the rest goes on."""

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from torch_impl import gpu_report
from torch_impl.gpu_report import CORE_VARIANTS, GPU_TEST_FILES, STEPS

REPO = Path(__file__).resolve().parents[1]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step(corpus_dir, tmp_path):
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--data_dir", str(corpus_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "torch_impl.gpu_report", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = read(out / "report.json")
    assert [s["name"] for s in report["steps"]] == [s.name for s in STEPS]
    assert all(s["status"] == "ok" and s["exit_code"] == 0 for s in report["steps"])
    assert all((out / s["log"]).is_file() for s in report["steps"])

    env = report["environment"]
    assert env["device_type"] == "cpu" and env["versions"]["torch"]
    assert env["ceilings"]["matmul_flops"] > 0 and env["ceilings"]["copy_bytes_per_second"] > 0
    train = read(out / "bench_train.json")["train"]
    assert [v["variant"] for v in train["variants"]] == list(CORE_VARIANTS)
    assert all(v["tokens_per_second"] > 0 for v in train["variants"])
    extras = read(out / "bench_train_extras.json")["train"]
    assert [v["variant"] for v in extras["variants"]] == ["all on"]  # no Triton or nanoGPT here
    assert read(out / "bench_attention.json")["attention"]["rows"]
    assert {r["implementation"] for r in read(out / "bench_adamw.json")["adamw"]} >= {"fused"}
    assert read(out / "gpu_cross_check.json")["passed"]
    assert "measured_beside_predicted" in read(out / "roofline.json")
    for stem in ("bench_train_train", "bench_train_extras_train", "bench_attention_attention"):
        assert (out / "figures" / f"{stem}.png").is_file()

    # the tests step collected the GPU tests (skipped on a CPU), less the cross-check
    cases = ElementTree.parse(out / "gpu_tests.xml").getroot().iter("testcase")
    names = [case.get("name") for case in cases]
    assert names and "test_optimized_gpu_training_stays_within_the_yardstick" not in names
    tests = next(s for s in report["steps"] if s["name"] == "tests")["tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["skipped"] == len(names)
    # the summary comes last, where a truncated output still shows it
    summary = result.stdout[result.stdout.rindex("==== GPU report") :]
    assert "cross-check: passed" in summary and "train: all on" in summary


def test_every_file_with_gpu_tests_is_in_the_report():
    marked = {
        f"tests/{path.name}"
        for path in (REPO / "tests").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.gpu$", path.read_text(), re.MULTILINE)
    }
    assert marked == set(GPU_TEST_FILES)
    file, name = gpu_report.CROSS_CHECK_TEST.split("::")
    assert f"def {name}(" in (REPO / file).read_text()


def test_a_step_past_its_cap_is_ended_with_its_children(tmp_path):
    # a child that starts a grandchild, and both would sleep for a minute
    code = (
        "import subprocess, sys, time; print('started', flush=True);"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    log = tmp_path / "logs" / "step.log"
    start = time.monotonic()
    exit_code, timed_out = gpu_report._run_command(
        [sys.executable, "-c", code], log, timeout=3, env=None
    )
    assert timed_out and exit_code != 0 and time.monotonic() - start < 20
    assert "started" in log.read_text()


def test_steps_without_time_left_are_skipped_and_recorded(corpus_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--quick", "--budget_s", "5", "--out", str(out)]
    assert gpu_report.main([*argv, "--data_dir", str(corpus_dir)]) == 1
    steps = read(out / "report.json")["steps"]
    assert [s["status"] for s in steps] == ["skipped"] * len(STEPS)
    assert all(s["error"].startswith("out of time") for s in steps)
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "train,bogus"], "--steps: choose from"),
        (["--budget_s", "0"], "--budget_s must be positive"),
        (["--nanogpt", "/nonexistent"], "no model.py there"),
        (["--data_dir", "EMPTY"], "no prepared corpus there"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(flags, message, tmp_path):
    (tmp_path / "empty").mkdir()
    flags = [str(tmp_path / "empty") if f == "EMPTY" else f for f in flags]
    result = subprocess.run(
        [sys.executable, "-m", "torch_impl.gpu_report", "--device", "cpu", *flags]
        + ["--out", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and message in result.stderr
