"""`elastic evaluate`: on the evaluation split(s), for one threshold (by default the calibrated one):
task metric, per-exit accuracy, exit histogram, layer and FLOPs speed-up from one cached all-exits
pass, the whole threshold curve from the same pass, and real batch-1 latency and batched throughput of
the adaptive model beside the static model, measured in the same run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.table import Table

from elastic_cli import checkpoint, exits, plots, timing, tracking
from elastic_cli.config import RootConfig
from elastic_cli.cost import ExitCosts
from elastic_cli.data import load_task_data
from elastic_cli.errors import UserError
from elastic_cli.metrics import compute_metrics, main_metric
from elastic_cli.stages import subjects
from elastic_cli.stages.common import (
    CachedOutputs,
    console,
    exit_scores,
    score_name,
    seed_everything,
    setup_device,
)


def _operating_point(
    cfg: RootConfig, calib: dict | None, exit_names: list[str]
) -> tuple[float, torch.Tensor | None, str]:
    """The threshold and temperatures to evaluate, and where the threshold came from."""
    temperatures = None
    if calib is not None and calib.get("exits") == exit_names:
        temperatures = torch.tensor(calib["temperatures"])
    if cfg.method.exit.threshold is not None:
        return float(cfg.method.exit.threshold), temperatures, "config"
    if calib is None:
        raise UserError(
            "no exit threshold: run `elastic calibrate` with the same method/backbone/task first, "
            "or set method.exit.threshold=..."
        )
    if calib["rule"] != cfg.method.exit.name:
        raise UserError(
            f"calibration.json was made for the {calib['rule']} rule, not {cfg.method.exit.name}: "
            "re-run `elastic calibrate` or set method.exit.threshold=..."
        )
    # (calibrations written before rule settings were recorded carry none: nothing to compare)
    recorded, ours = calib.get("rule_settings"), exits.rule_settings(cfg.method.exit)
    if recorded is not None and recorded != ours:
        differs = ", ".join(
            f"method.exit.{k}={recorded.get(k)} there, {ours.get(k)} here"
            for k in sorted(set(recorded) | set(ours))
            if recorded.get(k) != ours.get(k)
        )
        raise UserError(
            f"calibration.json's threshold was chosen with other rule settings ({differs}): "
            "re-run `elastic calibrate` with these settings, or set method.exit.threshold=..."
        )
    return float(calib["threshold"]), temperatures, "calibration"


def run(cfg: RootConfig, raw: DictConfig) -> float:
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    folder = checkpoint.checkpoint_dir(cfg)
    info = subjects.describe(folder)
    subjects.check_matches(folder, info, cfg)
    rule = exits.build_rule(cfg.method.exit)
    exits.check_applicable(rule, info.num_labels, info.has_lte, info.num_exits)

    with tracking.stage_run(cfg, raw, checkpoint=folder):
        subject = subjects.open_subject(folder, device)
        threshold, temperatures, source = _operating_point(
            cfg, checkpoint.read_calibration(folder), subject.exit_names
        )
        data = load_task_data(cfg.task, cfg.seed)
        scaled = temperatures is not None and bool((temperatures != 1.0).any())
        tracking.log_params(
            {"threshold_source": source, "exit_threshold": threshold, "temperature_scaled": scaled}
        )
        headline: dict[str, float] = {}
        for i, (split, examples) in enumerate(data.evals.items()):
            inputs = subject.encode(examples)
            cached = subject.outputs(split, inputs, cfg, device)
            result = _score_split(cfg, rule, threshold, temperatures, cached, subject, subject.costs(inputs))
            tracking.log_metrics({f"{split}/{k}": v for k, v in result["metrics"].items()})
            tracking.log_exit_histogram(result["counts"], subject.histogram_steps, prefix=f"{split}/")
            if cfg.evaluate.save_predictions:
                tracking.log_dataframe(result["predictions"], f"{split}/predictions.csv")
            if cfg.evaluate.grid:
                tracking.log_dataframe(result["curve"], f"{split}/threshold_curve.csv")
                tracking.log_figure(
                    plots.pareto_figure(
                        result["curve"], "flops_speedup", "score", "threshold", f"{split}: threshold curve"
                    ),
                    f"{split}/threshold_curve.png",
                )
            if i == 0:
                headline = dict(result["metrics"])
                if cfg.evaluate.latency:
                    headline.update(
                        _measure_latency(cfg, subject, inputs, cached, rule, threshold, temperatures, device)
                    )
                tracking.log_metrics(headline)
                tracking.log_exit_histogram(result["counts"], subject.histogram_steps)
            _print(split, cfg, threshold, source, result, subject.exit_names)
        if cfg.evaluate.latency:
            _print_latency(headline)
        return float(headline.get("task_metric", float("nan")))


def _score_split(
    cfg: RootConfig,
    rule: exits.ExitRule,
    threshold: float,
    temperatures: torch.Tensor | None,
    cached: CachedOutputs,
    subject: subjects.Subject,
    costs: ExitCosts,
) -> dict[str, Any]:
    signals = cached.signals
    names = subject.exit_names
    exit_idx, chosen = exits.simulate(rule, signals, threshold, temperatures)
    regression = chosen.shape[-1] == 1
    preds = chosen[:, 0].numpy() if regression else chosen.argmax(dim=-1).numpy()
    exit_idx_np = exit_idx.numpy()
    layers_run = costs.exit_layers[exit_idx_np]
    scores = compute_metrics(cfg.task.metric, preds, cached.labels)
    cost = costs.at(exit_idx_np)
    per_exit = exit_scores(signals, cached.labels)
    name = score_name(chosen.shape[-1])
    counts = np.bincount(exit_idx_np, minlength=len(names))
    fractions = counts / max(1, len(preds))
    metrics = {
        **scores,
        "task_metric": scores[main_metric(cfg.task.metric)],
        "threshold": threshold,
        "mean_exit_layer": float(layers_run.mean()),
        "layer_speedup": cost["layer_speedup"],
        "flops_speedup": cost["flops_speedup"],
        "static_gflops_per_example": cost["static_gflops_per_example"],
        "adaptive_gflops_per_example": cost["adaptive_gflops_per_example"],
        "n_examples": float(len(preds)),
        # the split between exits (a cascade's swift/super split): fraction leaving at each, and reaching
        # the last
        "super_fraction": float(fractions[-1]),
        **{f"exit_fraction_{n}": float(f) for n, f in zip(names, fractions)},
        **{f"exit_{name}_{n}": float(a) for n, a in zip(names, per_exit)},
    }
    columns: dict[str, Any] = {
        "row": np.arange(len(preds)),
        "label": cached.labels,
        "prediction": preds,
        "exit": np.asarray(names)[exit_idx_np],
        "exit_layer": layers_run,
        "tokens": cached.lengths,
    }
    if not regression:
        columns["confidence"] = chosen.softmax(dim=-1).max(dim=-1).values.numpy()
    curve = None
    if cfg.evaluate.grid:
        curve = subject.threshold_curve(rule, cached, costs, temperatures, cfg.evaluate.grid_size)
    return {
        "metrics": metrics,
        "score_name": name,
        "counts": counts.tolist(),
        "predictions": pd.DataFrame(columns),
        "curve": curve,
    }


def _measure_latency(
    cfg: RootConfig,
    subject: subjects.Subject,
    inputs: Any,
    cached: CachedOutputs,
    rule: exits.ExitRule,
    threshold: float,
    temperatures: torch.Tensor | None,
    device: torch.device,
) -> dict[str, float]:
    """Batch-1 latency (p50/p90) and batched throughput, adaptive beside static (the full model, or a
    cascade's last model alone), in the same process."""
    n = len(cached.labels)
    rng = np.random.default_rng(cfg.seed)
    subset = np.sort(rng.choice(n, size=min(cfg.evaluate.latency_samples, n), replace=False))
    singles = {int(subject.rows(b)[0]): b for b in subject.batches(inputs, 1, subset.tolist(), device)}

    def static(i: int) -> object:
        return subject.static(singles[i])

    def adaptive(i: int) -> object:
        return subject.adaptive(singles[i], rule, threshold, temperatures)

    console.print(f"timing batch-1 latency on {len(subset)} examples (static and adaptive interleaved)")
    ms = timing.latency_per_example(
        {"static": static, "adaptive": adaptive}, subset.tolist(), cfg.evaluate.latency_warmup
    )
    out: dict[str, float] = {}
    for name, values in ms.items():
        for k, v in timing.summarize_ms(values).items():
            out[f"latency_{name}_{k}"] = v
    out["latency_speedup_p50"] = out["latency_static_p50_ms"] / out["latency_adaptive_p50_ms"]
    out["latency_speedup_mean"] = out["latency_static_mean_ms"] / out["latency_adaptive_mean_ms"]

    # batched: the adaptive path compacts the batch as examples exit. Batches are timed interleaved
    # (static, adaptive, static, ...) like the batch-1 latency, so load from elsewhere hits both alike.
    chunks = subject.batches(inputs, cfg.device.throughput_batch_size, subset.tolist(), device)
    n_batches = max(1, min(cfg.evaluate.throughput_batches, len(chunks)))
    batch_ms = timing.latency_per_example(
        {
            "static": lambda k: subject.static(chunks[k]),
            "adaptive": lambda k: subject.adaptive(chunks[k], rule, threshold, temperatures),
        },
        list(range(n_batches)),
        warmup=1,
    )
    examples = sum(len(subject.rows(chunks[k])) for k in range(n_batches))
    for name, times in batch_ms.items():
        out[f"throughput_{name}"] = examples / (float(times.sum()) / 1000.0)
    out["throughput_speedup"] = out["throughput_adaptive"] / out["throughput_static"]

    # honesty check: the real adaptive path must agree with the simulation from cached outputs
    agree = []
    with torch.inference_mode():
        for b in chunks:
            res = subject.adaptive(b, rule, threshold, temperatures)
            sim_idx, sim_logits = exits.simulate(
                rule, cached.signals.rows(subject.rows(b).cpu()), threshold, temperatures
            )
            agree.append(
                (res.exit_index.cpu() == sim_idx) & (res.logits.argmax(-1).cpu() == sim_logits.argmax(-1))
            )
    out["adaptive_agreement"] = float(torch.cat(agree).float().mean())
    return out


def _print(
    split: str, cfg: RootConfig, threshold: float, source: str, result: dict, exit_names: list[str]
) -> None:
    m = result["metrics"]
    table = Table(
        title=f"{cfg.method.name} / {cfg.backbone.name} / {cfg.task.name} [{split}], {cfg.method.exit.name} threshold {threshold:.4f} ({source})"
    )
    table.add_column("exit", justify="right")
    table.add_column(f"exit {result['score_name']}", justify="right")
    table.add_column("exited here", justify="right")
    total = max(1, sum(result["counts"]))
    name = result["score_name"]
    for exit_name, count in zip(exit_names, result["counts"]):
        score = m[f"exit_{name}_{exit_name}"]
        table.add_row(exit_name, f"{score:.4f}", f"{count} ({100 * count / total:.1f}%)")
    console.print(table)
    console.print(
        f"{main_metric(cfg.task.metric)} {m['task_metric']:.4f} | mean exit layer {m['mean_exit_layer']:.2f} | "
        f"layer speed-up {m['layer_speedup']:.2f}x | FLOPs speed-up {m['flops_speedup']:.2f}x"
    )


def _print_latency(h: dict[str, float]) -> None:
    if "latency_static_p50_ms" not in h:
        return
    console.print(
        f"batch-1 latency p50/p90: static {h['latency_static_p50_ms']:.2f}/{h['latency_static_p90_ms']:.2f} ms, "
        f"adaptive {h['latency_adaptive_p50_ms']:.2f}/{h['latency_adaptive_p90_ms']:.2f} ms "
        f"(p50 speed-up {h['latency_speedup_p50']:.2f}x) | throughput static {h['throughput_static']:.1f}/s, "
        f"adaptive {h['throughput_adaptive']:.1f}/s | adaptive agrees with simulation on "
        f"{100 * h['adaptive_agreement']:.1f}% of timed examples"
    )
