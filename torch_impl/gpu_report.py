"""Everything the project asks of a GPU, in one command that fits a short loan of one:
`python -m torch_impl.gpu_report --out DIR` (the README's `make gpu-report`).

Made for a machine lent for minutes (an H100 or H200 with PyTorch and Triton preinstalled, no
network, nothing else), it needs no virtual environment and installs nothing: a copy of the
repository and its prepared corpus folder (data/shakespeare_char, `make data`) are enough. It
runs these steps, most important first, each in a process of its own with a time cap, so that a
step that fails or hangs costs only itself and a run cut short keeps what it finished:
  1 environment   GPU, memory, driver, torch, Triton, CUDA, cuDNN; the two ceilings the
                  numbers are read against: a bf16 matmul's FLOP/s and a device copy's bytes/s
  2 train         GPT-2 124M training step in bf16: tokens/s and MFU (against the datasheet
                  and the measured ceiling), everything on and each optimization off alone
  3 attention     causal attention forward + backward at T = 1024, 4096 and d = 64, 128: SDPA
                  flash, SDPA cuDNN, materialised, Triton
  4 adamw         one AdamW step on 124M parameters: for-loop, foreach, fused
  5 train_extras  step 2's "all on" beside the Triton attention and, with --nanogpt PATH,
                  nanoGPT's own model (loaded from that checkout)
  6 cross_check   the optimized GPU training against the NumPy float64 reference, 5 seeds
  7 tests         the `gpu` tests (pytest -m gpu), less the cross-check step 6 already ran
  8 roofline      the roofline model's predictions beside the measurements of steps 2-4
  9 figures       the figures of steps 2-6
After each step DIR/report.json is rewritten: the environment, and per step its status (ok,
failed, timed out, skipped), seconds and files, with the last lines of its output when it did
not succeed. Every step's whole output is in DIR/logs/. Compile caches (inductor's, Triton's
kernels and its autotuning results) live on disk, so a later step reuses what an earlier one
compiled. `--device cpu --quick` runs every step on tiny sizes on a CPU in about a minute: the
test suite's dry run, which keeps the command from rotting between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ref_numpy.data import (
    DEFAULT_DATA_DIR,
    PREPARED_FILES,
    REPO_ROOT,
    ensure_prepared,
    is_prepared,
)
from ref_numpy.errors import UserError
from ref_numpy.train.options import run_main

PROGRAM = "python -m torch_impl.gpu_report"
CROSS_CHECK_TEST = (
    "tests/test_gpu_cross_check.py::test_optimized_gpu_training_stays_within_the_yardstick"
)
GPU_TEST_FILES = (
    "tests/test_gpu_cross_check.py",
    "tests/test_torch_model.py",
    "tests/test_train_program.py",
    "tests/test_triton_attention.py",
)
# The train section in two steps: its four variants first (each optimization off alone), then
# the extras against "all on" again (compiled once already: inductor's cache), so that a slow
# compile of an extra cannot cost the core numbers
CORE_VARIANTS = ("all on", "no flash", "no fused AdamW", "no compile")
NANOGPT = "nanoGPT model"
EXTRA_VARIANTS = f"all on,triton attention,{NANOGPT}"
ATTENTION_SIZES = ("--lengths", "1024,4096", "--head_dims", "64,128")
MINIMUM_STEP_SECONDS = 10  # a step with less time than this left is skipped, not started
RESERVED_SECONDS = 25  # kept back from every step but the last two (roofline, figures)


@dataclass(frozen=True)
class Step:
    """One step of the report: its time cap (GPU, --quick) and the command it runs."""

    name: str
    cap: float
    quick_cap: float
    command: Callable[[argparse.Namespace], list[str]]
    last: bool = False  # may use the reserved seconds


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(section: str, sizes: Sequence[str] = (), variants: str | None = None, out: str = ""):
    """The command of one benchmark section (`torch_impl.bench`), saved as DIR/bench_<out>.json:
    `sizes` (flags) on a GPU, the section's --quick sizes with --quick; the train section's
    `variants` (nanoGPT's model among them only with --nanogpt)."""

    def command(args: argparse.Namespace) -> list[str]:
        path = args.out / f"bench_{out or section}.json"
        argv = ["-m", "torch_impl.bench", "--sections", section, "--device", args.device]
        argv += ["--out", str(path), *(["--quick"] if args.quick else sizes)]
        if variants is not None:
            argv += ["--variants", variants]
            if NANOGPT in variants and args.nanogpt is not None:
                argv += ["--nanogpt", str(args.nanogpt)]
        return _python(*argv)

    return command


def _cross_check(args: argparse.Namespace) -> list[str]:
    size = ["--steps", "2", "--seeds", "0", "--batch_size", "2"] if args.quick else []
    return _python(
        "-m", "torch_impl.gpu_cross_check", "--device", args.device, *size,
        "--data_dir", str(args.data_dir), "--out", str(args.out / "gpu_cross_check.json"),
        "--figures_dir", str(args.out / "figures"),
    )  # fmt: skip


def _tests(args: argparse.Namespace) -> list[str]:
    argv = ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs"]
    argv += ["--deselect", CROSS_CHECK_TEST, "--junitxml", str(args.out / "gpu_tests.xml")]
    return _python(*argv, *GPU_TEST_FILES)


def _internal(name: str) -> Callable[[argparse.Namespace], list[str]]:
    def command(args: argparse.Namespace) -> list[str]:
        argv = ["-m", "torch_impl.gpu_report", "--step", name, "--out", str(args.out)]
        argv += ["--device", args.device] + (["--quick"] if args.quick else [])
        return _python(*argv)

    return command


STEPS = (
    Step("environment", 90, 60, _internal("environment")),
    Step("train", 240, 120, _bench("train", variants=",".join(CORE_VARIANTS))),
    Step("attention", 120, 60, _bench("attention", ATTENTION_SIZES)),
    Step("adamw", 60, 60, _bench("adamw")),
    Step("train_extras", 180, 90, _bench("train", variants=EXTRA_VARIANTS, out="train_extras")),
    Step("cross_check", 150, 90, _cross_check),
    Step("tests", 240, 120, _tests),  # H200: cut at 180 s with 11 of 15 done (cold), 120 s warm
    Step("roofline", 30, 60, _internal("roofline"), last=True),
    Step("figures", 60, 60, _internal("figures"), last=True),
)


# ----------------------------------------------------------------------------- running a step
def _child_environment() -> dict[str, str]:
    """The steps' environment: unbuffered output, Triton's autotuning results cached on disk
    beside its kernels (so the tests reuse the attention step's tuning), and the repository
    importable from any working directory."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TRITON_CACHE_AUTOTUNING"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def _run_command(argv: list[str], log_path: Path, timeout: float, env: dict) -> tuple[int, bool]:
    """Run argv with its output streamed to this process's and to `log_path`: (exit code, timed
    out). On time out the step's whole process group is ended (its compile workers too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True,
        )  # fmt: skip

        def pump() -> None:
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write("    " + line)
                sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code, timed_out = process.wait(), True
        reader.join(timeout=10)
    return code, timed_out


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# ----------------------------------------------------------------------------- the report
def _save(report: dict, out: Path) -> None:
    path = out / "report.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)  # a run killed mid-write keeps the previous report whole


def _data_dir(args: argparse.Namespace) -> Path:
    """The prepared corpus the cross-check and the tests train on: --data_dir, else the
    repository's data/shakespeare_char, prepared here if the corpus package is installed."""
    if args.data_dir is not None:
        folder = Path(args.data_dir)
        if not is_prepared(folder):
            raise UserError(
                f"--data_dir {folder}: no prepared corpus there ({', '.join(PREPARED_FILES)})"
            )
        return folder
    if is_prepared(DEFAULT_DATA_DIR):
        return DEFAULT_DATA_DIR
    try:
        ensure_prepared(DEFAULT_DATA_DIR)
    except UserError:
        raise UserError(
            f"no prepared corpus in {DEFAULT_DATA_DIR} and no corpus package to make it: run "
            "`make data` where the package is, and copy data/ here (or give --data_dir)"
        ) from None
    return DEFAULT_DATA_DIR


def run_report(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir = _data_dir(args)
    chosen = [step for step in STEPS if args.steps is None or step.name in args.steps]
    deadline = time.monotonic() + args.budget_s
    env = _child_environment()
    report = {
        "report": PROGRAM,
        "argv": sys.argv[1:],
        "quick": args.quick,
        "budget_seconds": args.budget_s,
        "data_dir": str(args.data_dir),
        "steps": [],
    }
    started = time.monotonic()
    names = ", ".join(step.name for step in chosen)
    print(f"GPU report to {args.out}, {args.budget_s:.0f} s budget: {names}")
    for index, step in enumerate(chosen, 1):
        left = deadline - time.monotonic() - (0 if step.last else RESERVED_SECONDS)
        timeout = min(step.quick_cap if args.quick else step.cap, left)
        entry = {"name": step.name, "status": "skipped", "seconds": 0.0, "timeout": timeout}
        report["steps"].append(entry)
        if timeout < MINIMUM_STEP_SECONDS:
            entry["error"] = f"out of time: {max(left, 0):.0f} s left of the budget"
            print(f"\n[{index}/{len(chosen)}] {step.name}: skipped, out of time")
            _save(report, args.out)
            continue
        print(f"\n[{index}/{len(chosen)}] {step.name} (at most {timeout:.0f} s)")
        log_path = args.out / "logs" / f"{index}_{step.name}.log"
        step_started = time.monotonic()
        code, timed_out = _run_command(step.command(args), log_path, timeout, env)
        entry["seconds"] = round(time.monotonic() - step_started, 1)
        entry["exit_code"] = code
        entry["log"] = str(log_path.relative_to(args.out))
        entry["status"] = "timed out" if timed_out else ("ok" if code == 0 else "failed")
        if entry["status"] != "ok":
            entry["output_tail"] = _tail(log_path)
        if step.name == "environment":
            report["environment"] = _read_json(args.out / "environment.json")
        if step.name == "tests":
            entry["tests"] = junit_counts(args.out / "gpu_tests.xml")
        print(f"[{index}/{len(chosen)}] {step.name}: {entry['status']} in {entry['seconds']:.0f} s")
        _save(report, args.out)
    report["seconds"] = round(time.monotonic() - started, 1)
    _save(report, args.out)
    print_summary(report, args.out)
    return report


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def junit_counts(junit_xml: Path) -> dict | None:
    """Passed, failed, errors and skipped of a pytest junit file (None if it was not written)."""
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


# ----------------------------------------------------------------------------- the summary
def print_summary(report: dict, out: Path) -> None:
    """The headline numbers of every step that produced them, last in the output: where only
    the end of the output comes back, it holds what matters."""
    from torch_impl.report import format_table

    env = report.get("environment") or {}
    print(f"\n==== GPU report: {env.get('device', '?')}, {env.get('date', '?')} ====")
    rows = [
        [s["name"], s["status"], f"{s['seconds']:.0f}", f"{s['timeout']:.0f}", s.get("error", "")]
        for s in report["steps"]
    ]
    print(format_table(["step", "status", "seconds", "cap", "note"], rows))
    ceilings = env.get("ceilings") or {}
    if ceilings:
        print(
            f"ceilings: {ceilings['matmul_flops'] / 1e12:.1f} TFLOP/s ({ceilings['matmul']}), "
            f"{ceilings['copy_bytes_per_second'] / 1e12:.2f} TB/s device copy"
        )
    for name in ("train", "train_extras"):
        train = (_read_json(out / f"bench_{name}.json") or {}).get("train")
        if train:
            print(f"{name}: " + "; ".join(
                f"{v['variant']} {v['tokens_per_second']:,.0f} tok/s"
                + (f" MFU {100 * v['mfu_vs_peak']:.1f}%" if v.get("mfu_vs_peak") else "")
                + (f" ({v['error']})" if v.get("error") else "")
                for v in train["variants"] if "tokens_per_second" in v or v.get("error")
            ))  # fmt: skip
    attention = (_read_json(out / "bench_attention.json") or {}).get("attention")
    if attention:
        print("attention fwd+bwd TFLOPS: " + "; ".join(
            f"{r['implementation']} T={r['T']} d={r['head_dim']} {r['forward_backward_tflops']:.0f}"
            for r in attention["rows"] if "forward_backward_tflops" in r
        ))  # fmt: skip
    adamw = (_read_json(out / "bench_adamw.json") or {}).get("adamw")
    if adamw:
        print("adamw ms: " + "; ".join(
            f"{r['implementation']} {r['seconds_per_step'] * 1e3:.2f}"
            for r in adamw if "seconds_per_step" in r
        ))  # fmt: skip
    cross = _read_json(out / "gpu_cross_check.json")
    if cross:
        print(f"cross-check: {'passed' if cross.get('passed') else 'FAILED'}")
    tests = next((s.get("tests") for s in report["steps"] if s["name"] == "tests"), None)
    if tests:
        print(f"gpu tests: {tests['passed']} passed, {tests['failures']} failed, "
              f"{tests['errors']} errors, {tests['skipped']} skipped")  # fmt: skip


# ----------------------------------------------------------------------------- internal steps
def environment_step(args: argparse.Namespace) -> None:
    """What the machine is, and its two ceilings, measured here: a bf16 (CPU: float32) matmul's
    FLOP/s and a device-to-device copy's bytes (read + written) per second."""
    import torch

    from torch_impl.report import environment, save_report
    from torch_impl.runtime import matmul_ceiling, resolve_device

    device = resolve_device(args.device)
    env = {"report": PROGRAM, **environment(device), "cpu_count": os.cpu_count()}
    env["versions"]["cudnn"] = torch.backends.cudnn.version() if device.type == "cuda" else None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": properties.name,
            "memory_bytes": properties.total_memory,
            "multiprocessors": properties.multi_processor_count,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "driver": _nvidia_smi("driver_version"),
            "max_sm_clock_mhz": _nvidia_smi("clocks.max.sm"),
        }
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 256 if args.quick else (8192 if device.type == "cuda" else 2048)
    copy_elements = 2**16 if args.quick else (2**28 if device.type == "cuda" else 2**24)
    env["ceilings"] = {
        "matmul_flops": matmul_ceiling(device, dtype, n),
        "matmul": f"{n}^3 {str(dtype).removeprefix('torch.')} matmul, best of 5",
        "copy_bytes_per_second": copy_bandwidth(device, copy_elements),
        "copy": f"{copy_elements * 4 / 2**20:.0f} MiB float32 copy, read + written, best of 10",
    }
    save_report(env, args.out / "environment.json")
    print(json.dumps(env, indent=2))


def _nvidia_smi(field: str) -> str | None:
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout else None
    )


def copy_bandwidth(device, elements: int) -> float:
    """Bytes per second of one float32 copy of `elements` values (read once, written once)."""
    import torch

    from torch_impl.bench.timing import interleaved_times

    source = torch.randn(elements, device=device)
    target = torch.empty_like(source)
    times = interleaved_times({"copy": lambda: target.copy_(source)}, 10, 2, device)["copy"]
    return 2 * source.numel() * source.element_size() / min(times)


def roofline_step(args: argparse.Namespace) -> None:
    """The roofline model's predictions beside what steps 2-4 measured (on a GPU it knows)."""
    from torch_impl.bench.roofline import gpu_measurements
    from torch_impl.report import format_table, save_report

    found = gpu_measurements(args.out)
    rows = [
        [name, label, f"{row['measured']:.3g}", f"{row['predicted']:.3g}"]
        for name, result in found.items()
        for label, row in result["rows"].items()
    ]
    save_report({"report": PROGRAM, "measured_beside_predicted": found}, args.out / "roofline.json")
    if rows:
        print(format_table(["file", "quantity", "measured", "predicted"], rows))
    else:
        print("no GPU measurement the roofline model has a datasheet device for")


def figures_step(args: argparse.Namespace) -> None:
    """Every bench result's figures, into DIR/figures, named after its file (the train
    section is in two: bench_train_train.png and bench_train_extras_train.png)."""
    from torch_impl.bench.command import PROGRAM as BENCH
    from torch_impl.bench.command import write_figures
    from torch_impl.report import load_report

    for path in sorted(args.out.glob("bench_*.json")):
        report = load_report(path, BENCH)
        for written in write_figures(report, args.out / "figures", stem=path.stem):
            print(f"wrote {written}")


INTERNAL = {"environment": environment_step, "roofline": roofline_step, "figures": figures_step}


# ----------------------------------------------------------------------------- the command
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="results/gpu_report_<device>/")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step")
    parser.add_argument(
        "--budget_s", type=float, default=530, help="seconds for the whole report (default 530)"
    )
    parser.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout folder")
    parser.add_argument("--data_dir", type=Path, default=None, help="the prepared corpus")
    parser.add_argument(
        "--steps", default=None, help=f"comma-separated, of {','.join(s.name for s in STEPS)}"
    )
    parser.add_argument("--step", choices=sorted(INTERNAL), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is not None:
        args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(args.steps) - {s.name for s in STEPS})
        if unknown or not args.steps:
            raise UserError(f"--steps: choose from {','.join(s.name for s in STEPS)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget_s must be positive, got {args.budget_s}")
    if args.nanogpt is not None and not (args.nanogpt / "model.py").is_file():
        raise UserError(f"--nanogpt {args.nanogpt}: no model.py there; give its checkout")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step is not None:
        INTERNAL[args.step](args)
        return 0
    if args.out is None:
        from torch_impl.report import RESULTS_DIR, device_label
        from torch_impl.runtime import resolve_device

        args.out = RESULTS_DIR / f"gpu_report_{device_label(resolve_device(args.device))}"
    args.out = args.out.resolve()
    report = run_report(args)
    return 0 if all(step["status"] == "ok" for step in report["steps"]) else 1


if __name__ == "__main__":
    run_main(lambda: sys.exit(main()))
