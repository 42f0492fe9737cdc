"""The roofline model (`ref_numpy.roofline`) against measurement on this CPU, and every speed
claim predicted for GPUs beside what was measured.

The "roofline" section of `python -m torch_impl.bench` (`--sections roofline`). First this
machine's roofs are measured with torch's own kernels, each by a micro-benchmark of its own
(`torch_impl.roofline_check.measure_this_cpu`), before and after the steps, keeping the best of
the two. Then, at three configurations (the model
`make train` trains, a wider one, a long context), a float32 eager training step as the trainer
runs it (SDPA attention, fused AdamW) is predicted kernel by kernel, and measured: the whole step
by the wall clock, each kernel group by torch.profiler. Last, the claims table
(`ref_numpy.roofline.claims`): predicted for the datasheet GPUs; for this CPU predicted and
measured in this run (attention and AdamW at the claim's sizes) or read from the train section
(compile); for a GPU, measured wherever a GPU run of the benchmark left results in `results/`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch

from ref_numpy.config import GPTConfig
from ref_numpy.flops import flops_per_token
from ref_numpy.gpt import param_shapes
from ref_numpy.roofline import GROUPS, attention_kernels, predict, step_kernels
from ref_numpy.roofline.claims import (
    GPT2_124M,
    all_claims,
    compile_claim,
    flash_attention_claim,
    fused_adamw_claim,
    mfu_ceiling_claim,
)
from ref_numpy.roofline.devices import GPUS, Device, best_of, describe, gpu_for
from torch_impl.bench.adamw import compare_adamw
from torch_impl.bench.attention import MANUAL, SDPA_FLASH, attention_functions
from torch_impl.bench.common import QUICK_BATCH_SIZE, QUICK_MODEL, BenchOptions, make_train_model
from torch_impl.bench.timing import interleaved_times
from torch_impl.report import RESULTS_DIR, figure_title, format_table, saved_results
from torch_impl.roofline_check import gelu_rate, measure_this_cpu, profile_step

ATTENTION, OPTIMIZER = "flash", "fused"  # as the CPU trainer runs: SDPA, fused AdamW
CLAIM_GPUS = ("H100 SXM", "H200", "A100 40GB")
CLAIM_T = (1024, 4096)


def validation_configs(quick: bool) -> dict[str, tuple[GPTConfig, int]]:
    """name -> (model, batch size): the CPU default, a wider model, a long context."""
    if quick:
        return {"quick": (QUICK_MODEL, QUICK_BATCH_SIZE)}
    cfg, batch = make_train_model()
    wide = dataclasses.replace(cfg, n_embd=512, n_head=8)
    long = dataclasses.replace(cfg, block_size=512)
    return {
        f"CPU default (C={cfg.n_embd}, T={cfg.block_size}, B={batch})": (cfg, batch),
        f"wider (C=512, T={cfg.block_size}, B=8)": (wide, 8),
        f"long context (C={cfg.n_embd}, T=512, B=4)": (long, 4),
    }


def measure_steps(
    configs: dict[str, tuple[GPTConfig, int]], steps: int, quick: bool = False
) -> tuple[Device, dict]:
    """Each configuration's step profiled (`profile_step`), with this CPU's roofs measured before
    and after them all and the best of the two kept (`devices.best_of`): a roof is the most the
    machine attains, and on a shared machine a single measurement can come out low. `quick`:
    one quick measurement (`measure_device`), for a run that checks the code paths."""
    before = measure_this_cpu(quick)
    measured = {
        name: profile_step(cfg, batch, cfg.block_size, ATTENTION, OPTIMIZER, steps)
        for name, (cfg, batch) in configs.items()
    }
    return (before if quick else best_of([before, measure_this_cpu()])), measured


def validate(cfg: GPTConfig, batch: int, device: Device, measured: dict) -> dict:
    """Predicted against measured seconds (`profile_step`'s), per kernel group and for the
    whole step."""
    prediction = predict(
        step_kernels(cfg, batch, attention=ATTENTION, optimizer=OPTIMIZER),
        device,
        "fp32",
        cfg,
        batch * cfg.block_size,
    )
    groups = {
        group: {
            "predicted": predicted,
            "measured": measured["groups"].get(group, 0.0),
            "calls": measured["calls"].get(group, 0),
        }
        for group, predicted in prediction.by_group(overhead=False).items()
    }
    return {
        "groups": groups,
        "bound": prediction.bound_by_group(),
        # the calls' cost: predicted as calls x the measured cost of one; measured as the
        # profiled step's time outside every mapped operator (Python, autograd, views)
        "overhead_predicted": prediction.overhead_seconds,
        "overhead_measured": measured["groups"]["other"],
        "step_predicted": prediction.seconds,
        "step_measured": measured["wall_seconds"],
        "step_profiled": measured["profiled_seconds"],
        "mfu_predicted": prediction.mfu,
        "mfu_measured": flops_per_token(cfg)
        * batch
        * cfg.block_size
        / measured["wall_seconds"]
        / device.peak_flops["fp32"],
    }


def _measure_attention(options: BenchOptions, device: Device) -> list[dict]:
    """Causal attention forward + backward on this CPU at the claim's T, d = 64, one sequence
    of two heads, float32: materialised against SDPA's flash kernel, interleaved."""
    rows = []
    for T in (16, 32) if options.quick else CLAIM_T:
        batch, heads, head_dim = 1, 2, 16 if options.quick else 64
        functions = attention_functions(T, heads, head_dim, torch.device("cpu"), True)
        generator = torch.Generator().manual_seed(0)
        q, k, v, grad = (
            torch.randn(batch, heads, T, head_dim, generator=generator) for _ in range(4)
        )
        for t in (q, k, v):
            t.requires_grad_(True)
        calls = {
            name: (lambda f=functions[name], inputs=(q, k, v), g=grad: f(*inputs).backward(g))
            for name in (MANUAL, SDPA_FLASH)
        }
        times = interleaved_times(calls, options.steps, options.warmup, torch.device("cpu"))
        measured = {name: statistics.median(t) for name, t in times.items()}
        predicted = {
            name: predict(
                attention_kernels(
                    batch, heads, T, head_dim, dtype_bytes=4, attention=kind, device_type="cpu"
                ),
                device,
                "fp32",
            ).seconds
            for name, kind in ((MANUAL, "materialised"), (SDPA_FLASH, "flash"))
        }
        rows.append(
            {
                "T": T,
                "head_dim": head_dim,
                "batch": batch,
                "heads": heads,
                "measured_seconds": measured,
                "predicted_seconds": predicted,
                "measured_speedup": measured[MANUAL] / measured[SDPA_FLASH],
                "predicted_speedup": predicted[MANUAL] / predicted[SDPA_FLASH],
            }
        )
    return rows


def _measure_adamw(options: BenchOptions, device: Device) -> dict:
    """One AdamW step on GPT-2 124M's parameter shapes, for-loop, foreach and fused, measured
    on this CPU (`bench.adamw.compare_adamw`) beside the model's prediction."""
    cfg = QUICK_MODEL if options.quick else GPT2_124M
    runs = compare_adamw(
        None, steps=options.steps, warmup=options.warmup, shapes=list(param_shapes(cfg).values())
    )
    out = {}
    for name, optimizer in (("for-loop", "for_loop"), ("foreach", "foreach"), ("fused", "fused")):
        kernels = [
            k for k in step_kernels(cfg, 1, 1, optimizer=optimizer) if k.group == "optimizer"
        ]
        out[optimizer] = {
            "measured_seconds": runs[name]["seconds_per_step"],
            "predicted_seconds": predict(kernels, device, "fp32").seconds,
        }
    return out


def _saved_results(label: str) -> dict | None:
    path = RESULTS_DIR / f"bench_{label}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _measured_compile(report_train: dict | None) -> dict | None:
    """Tokens/s of the train section's "all on" over its "no compile": the step speedup that
    torch.compile gave, measured (this run's train section, else the saved CPU run's)."""
    train = report_train or (_saved_results("cpu") or {}).get("train")
    if not train:
        return None
    rows = {r["variant"]: r for r in train.get("variants", []) if r.get("tokens_per_second")}
    if "all on" not in rows or "no compile" not in rows:
        return None
    speedup = rows["all on"]["tokens_per_second"] / rows["no compile"]["tokens_per_second"]
    return {"speedup": speedup, "config": train.get("config")}


def _values_by(rows: list[dict], key: str, value: str) -> dict:
    return {row[key]: row[value] for row in rows if row.get(value) is not None}


def gpu_measurements(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every full GPU run of the benchmark saved in `results_dir`, measured beside predicted
    for the datasheet device it ran on, keyed by file name: flash attention's speedup over the
    materialised path (head dim 64, each T both were timed at), fused AdamW's over foreach,
    compile's step speedup (the train section's "all on" over "no compile") and the MFU of
    "all on" against the datasheet peak. The GPU report's folders (`gpu_report_<device>/`) are read
    too, keyed by their relative path."""
    found = {}
    for path, report in saved_results(results_dir, "bench_*.json"):
        if report.get("device_type") != "cuda" or report.get("quick"):
            continue
        device = gpu_for(report.get("device", ""))
        rows: dict[str, dict] = {}
        if device is not None:
            rows = _gpu_rows(report, device)
        found[path.relative_to(Path(results_dir)).as_posix()] = {
            "device": report.get("device"),
            "date": report.get("date"),
            "model": device.name if device else None,
            "rows": rows,
        }
    return found


def _gpu_rows(report: dict, device: Device) -> dict[str, dict]:
    rows = {}
    attention = report.get("attention") or {}
    for T in sorted({r["T"] for r in attention.get("rows", []) if r.get("head_dim") == 64}):
        at_T = [r for r in attention["rows"] if r["T"] == T and r.get("head_dim") == 64]
        seconds = _values_by(at_T, "implementation", "forward_backward_seconds")
        if MANUAL in seconds and SDPA_FLASH in seconds:
            claim = flash_attention_claim(device, T)
            rows[f"flash attention, T = {T}"] = {
                "measured": seconds[MANUAL] / seconds[SDPA_FLASH],
                "predicted": claim["speedup_over_materialised"],
            }
    adamw = _values_by(report.get("adamw") or [], "implementation", "seconds_per_step")
    if "foreach" in adamw and "fused" in adamw:
        rows["fused AdamW over foreach"] = {
            "measured": adamw["foreach"] / adamw["fused"],
            "predicted": fused_adamw_claim(device)["foreach"]["fused_speedup"],
        }
    variants = {v["variant"]: v for v in (report.get("train") or {}).get("variants", [])}
    tokens = {name: v.get("tokens_per_second") for name, v in variants.items()}
    if tokens.get("all on") and tokens.get("no compile"):
        rows["compile, whole step"] = {
            "measured": tokens["all on"] / tokens["no compile"],
            "predicted": compile_claim(device)["flash_fused_speedup"],
        }
    if variants.get("all on", {}).get("mfu_vs_peak"):
        rows["MFU, everything on"] = {
            "measured": variants["all on"]["mfu_vs_peak"],
            "predicted": mfu_ceiling_claim(device)["compiled_mfu"],
        }
    return rows


def run(options: BenchOptions) -> dict:
    """Measure this CPU, validate the model at three configurations, and fill the claims table."""
    configs = validation_configs(options.quick)
    device, measured = measure_steps(configs, options.steps, options.quick)
    validation = {
        name: validate(cfg, batch, device, measured[name]) for name, (cfg, batch) in configs.items()
    }
    claims = all_claims([GPUS[name] for name in CLAIM_GPUS])
    return {
        "device": dataclasses.asdict(device),
        "gelu_rate": gelu_rate(),
        "validation": validation,
        "claims": claims,
        "cpu_claims": {
            "attention": _measure_attention(options, device),
            "adamw": _measure_adamw(options, device),
            "compile_measured": _measured_compile(None),
        },
        "gpu_measured": gpu_measurements(),
    }


# ----------------------------------------------------------------------------- the report
def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3g}"


def print_table(section: dict) -> None:
    device = Device(**section["device"])
    print(f"\nroofs of {describe(device, 'fp32')}")
    print(
        f"  (torch's GELU runs at {section['gelu_rate'] / 1e9:.3g} G/s, torch.erf at "
        f"{device.transcendentals['erf'] / 1e9:.3g} G/s)"
    )
    for name, result in section["validation"].items():
        print(f"\npredicted against measured, one eager float32 step: {name}")
        rows = [
            [
                group,
                result["bound"].get(group, ""),
                _ms(row["predicted"]),
                _ms(row["measured"]),
                f"{row['measured'] / row['predicted']:.2f}" if row["predicted"] else "",
                row["calls"],
                f"{row['measured'] / row['calls'] * 1e6:.0f}" if row["calls"] else "",
            ]
            for group, row in result["groups"].items()
        ]
        for label, key in (
            ("calls: Python, autograd, dispatch", "overhead"),
            ("whole step (wall clock)", "step"),
        ):
            predicted, measured = result[f"{key}_predicted"], result[f"{key}_measured"]
            rows.append(
                [label, "", _ms(predicted), _ms(measured), f"{measured / predicted:.2f}", "", ""]
            )
        headers = ["group", "bound", "predicted ms", "measured ms", "measured/pred", "calls"]
        print(format_table([*headers, "us per call"], rows))
    _print_claims(section)


def _print_claims(section: dict) -> None:
    claims, cpu = section["claims"], section["cpu_claims"]
    print("\nclaim: flash attention is ~3x faster (causal, d = 64, forward + backward)")
    rows = []
    for device, c in claims.items():
        for row in c["flash_attention"]:
            rows.append(
                [
                    device,
                    row["T"],
                    f"{row['batch']}x{row['heads']}",
                    f"{row['speedup_over_materialised']:.3g}",
                    f"{row['speedup_over_fused_softmax']:.3g}",
                    "",
                ]
            )
    for row in cpu["attention"]:
        rows.append(
            [
                "this CPU",
                row["T"],
                f"{row['batch']}x{row['heads']}",
                f"{row['predicted_speedup']:.3g}",
                "",
                f"{row['measured_speedup']:.3g}",
            ]
        )
    print(
        format_table(
            ["device", "T", "BxH", "predicted vs eager", "vs fused softmax", "measured"], rows
        )
    )
    print("\nclaim: fused AdamW gives a ~20-30% optimizer speedup (GPT-2 124M)")
    rows = [
        [
            device,
            *(
                f"{c['fused_adamw'][o]['seconds'] * 1e3:.3g}"
                for o in ("for_loop", "foreach", "fused")
            ),
            f"{c['fused_adamw']['foreach']['fused_speedup']:.3g}",
            f"{c['fused_adamw']['foreach']['share_of_step']:.1%}",
            f"{c['fused_adamw']['fused']['share_of_step']:.1%}",
        ]
        for device, c in claims.items()
    ]
    adamw = cpu["adamw"]
    for kind in ("predicted", "measured"):
        seconds = {o: adamw[o][f"{kind}_seconds"] for o in ("for_loop", "foreach", "fused")}
        rows.append(
            [
                f"this CPU, {kind}",
                *(_ms(s) for s in seconds.values()),
                f"{seconds['foreach'] / seconds['fused']:.3g}",
                "",
                "",
            ]
        )
    print(
        format_table(
            [
                "device",
                "for-loop ms",
                "foreach ms",
                "fused ms",
                "fused speedup",
                "foreach share",
                "fused share",
            ],
            rows,
        )
    )
    print("\nclaim: torch.compile gives ~2x (GPT-2 124M, T = 1024, bf16; elementwise fusion)")
    rows = [
        [
            device,
            f"{c['compile']['flash_fused_speedup']:.3g}",
            _ms(c["compile"]["dec_2022_eager_seconds"]),
            _ms(c["compile"]["dec_2022_compiled_seconds"]),
            f"{c['compile']['dec_2022_speedup']:.3g}",
        ]
        for device, c in claims.items()
    ]
    print(
        format_table(
            ["device", "flash+fused: speedup", "Dec 2022 eager ms", "compiled ms", "speedup"], rows
        )
    )
    compiled = cpu["compile_measured"]
    print(
        "  nanoGPT's README (Dec 2022): ~250 ms -> 135 ms per iteration (1.85x); "
        + (
            f"this CPU's train section measured {compiled['speedup']:.3g}x for the CPU model"
            if compiled
            else "this CPU's train section has not been run"
        )
    )
    print("\nclaim: nanoGPT reaches ~40-50% MFU on an A100; GPUs are compute-bound")
    rows = [
        [
            device,
            f"{c['mfu_ceiling']['eager_mfu']:.1%}",
            f"{c['mfu_ceiling']['compiled_mfu']:.1%}",
            f"{c['memory_bound']['memory_bound_share']:.1%}",
            ", ".join(g for g, b in c["memory_bound"]["groups"].items() if b == "memory"),
        ]
        for device, c in claims.items()
    ]
    print(
        format_table(
            ["device", "MFU ceiling eager", "compiled", "time memory-bound", "memory-bound groups"],
            rows,
        )
    )
    if section["gpu_measured"]:
        print("\nmeasured on a GPU (results/) beside the model's bound for that GPU")
        rows = [
            [
                f"{name} ({run['model'] or 'no datasheet entry'})",
                what,
                f"{r['predicted']:.3g}",
                f"{r['measured']:.3g}",
            ]
            for name, run in section["gpu_measured"].items()
            for what, r in run["rows"].items()
        ]
        print(format_table(["run", "claim", "predicted", "measured"], rows))
    else:
        print("no GPU run of the benchmark in results/: GPU columns are predictions only")


def figure(report: dict):
    """Predicted against measured milliseconds per kernel group, one panel per configuration."""
    import matplotlib.pyplot as plt  # only when drawing

    validation = report["roofline"]["validation"]
    fig, axes = plt.subplots(1, len(validation), figsize=(5 * len(validation), 4.5), squeeze=False)
    for ax, (name, result) in zip(axes[0], validation.items()):
        groups = [g for g in GROUPS if result["groups"][g]["predicted"] > 0]
        x = range(len(groups))
        ax.bar(
            [i - 0.2 for i in x],
            [result["groups"][g]["predicted"] * 1e3 for g in groups],
            0.4,
            label="predicted",
        )
        ax.bar(
            [i + 0.2 for i in x],
            [result["groups"][g]["measured"] * 1e3 for g in groups],
            0.4,
            label="measured",
        )
        ax.set_xticks(list(x), groups, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("ms per step")
        ax.set_title(
            f"{name}\nstep: predicted {result['step_predicted'] * 1e3:.0f} ms, "
            f"measured {result['step_measured'] * 1e3:.0f} ms",
            fontsize=8,
        )
        ax.legend(fontsize=8)
    what = "roofline model against torch.profiler, float32 eager step"
    fig.suptitle(figure_title(report, what), fontsize=9)
    fig.tight_layout()
    return fig


CPU_ONLY = True  # the validation is of this CPU; a GPU run reads its claims from the CPU run
