"""`elastic calibrate`: on the calibration split (carved from train, never trained on), fit per-exit
temperatures and choose the exit threshold that meets the target; write calibration.json beside the
checkpoint. The evaluation split is never looked at here."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from elastic_cli import calibration, checkpoint, exits, plots, tracking
from elastic_cli.config import RootConfig
from elastic_cli.data import encode, load_task_data
from elastic_cli.stages.common import (
    cached_outputs,
    console,
    cost_dims,
    exit_scores,
    score_name,
    seed_everything,
    setup_device,
)


def run(cfg: RootConfig, raw: DictConfig) -> float:
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    folder = checkpoint.checkpoint_dir(cfg)
    meta = checkpoint.read_meta(folder)  # fails early, before a run is opened, when there is none
    rule = exits.build_rule(cfg.method.exit)
    exits.check_applicable(rule, meta.num_labels, meta.lte, len(meta.exit_layers))

    with tracking.stage_run(cfg, raw):
        model, tokenizer, meta = checkpoint.load(folder, device)
        data = load_task_data(cfg.task, cfg.seed)
        enc = encode(data.calibration, tokenizer, meta.max_seq_length)
        cached = cached_outputs(
            folder,
            checkpoint.weights_fingerprint(folder),
            "calibration",
            model,
            enc,
            cfg,
            int(tokenizer.pad_token_id),
            device,
        )
        n_exits = len(meta.exit_layers)
        signals = cached.signals
        # temperatures rescale class probabilities: nothing to fit for a regression's single output
        scale = rule.temperature_scaling if cfg.calibrate.temperature is None else cfg.calibrate.temperature
        temperatures = (
            calibration.fit_temperatures(signals.logits, torch.as_tensor(cached.labels))
            if scale and meta.num_labels > 1
            else torch.ones(n_exits)
        )
        grid = rule.grid(meta.num_labels, n_exits, cfg.calibrate.grid_size).tolist()
        dims = cost_dims(model)
        curve = calibration.threshold_curve(
            rule, signals, cached.labels, meta.exit_layers, grid, temperatures, cached.lengths, dims
        )
        accs = exit_scores(signals, cached.labels)
        reference = float(accs[-1])
        chosen = calibration.choose_threshold(
            curve,
            cfg.calibrate.target,
            reference_accuracy=reference,
            tolerance=cfg.calibrate.tolerance,
            speedup=cfg.calibrate.speedup,
            larger_is_slower=rule.larger_is_slower,
            score_column="score",
        )
        result: dict[str, Any] = {
            "rule": rule.name,
            "threshold": float(chosen["threshold"]),
            "temperatures": [float(t) for t in temperatures],
            "exit_layers": meta.exit_layers,
            "target": cfg.calibrate.target,
            "tolerance": cfg.calibrate.tolerance,
            "speedup_target": cfg.calibrate.speedup,
            "target_met": bool(chosen["target_met"]),
            "score_name": score_name(meta.num_labels),
            "reference_score": reference,
            "score": float(chosen["score"]),
            "layer_speedup": float(chosen["layer_speedup"]),
            "flops_speedup": float(chosen.get("flops_speedup", float("nan"))),
            "n_examples": int(len(cached.labels)),
            "weights": checkpoint.weights_fingerprint(folder),
        }
        checkpoint.write_json_atomic(folder / checkpoint.CALIBRATION, result)

        tracking.log_metrics(
            {
                "calibration/threshold": result["threshold"],
                "calibration/score": result["score"],
                "calibration/reference_score": reference,
                "calibration/layer_speedup": result["layer_speedup"],
                "calibration/flops_speedup": result["flops_speedup"],
                "calibration/target_met": float(result["target_met"]),
                **{
                    f"calibration/temperature_L{layer}": float(t)
                    for layer, t in zip(meta.exit_layers, temperatures)
                },
                **{
                    f"calibration/exit_{result['score_name']}_L{layer}": float(a)
                    for layer, a in zip(meta.exit_layers, accs)
                },
            }
        )
        tracking.log_dict(result, "calibration.json")
        tracking.log_dataframe(curve, "calibration_curve.csv")
        tracking.log_figure(
            plots.pareto_figure(
                curve, "layer_speedup", "score", "threshold", "calibration split: threshold curve"
            ),
            "calibration_curve.png",
        )
        _print(result, meta.exit_layers, accs)
        return float(result["score"])


def _print(result: dict, exit_layers: list[int], accs) -> None:
    table = Table(title=f"calibration ({result['n_examples']} examples)")
    table.add_column("exit layer", justify="right")
    table.add_column(result["score_name"], justify="right")
    table.add_column("temperature", justify="right")
    for layer, a, t in zip(exit_layers, accs, result["temperatures"]):
        table.add_row(str(layer), f"{a:.4f}", f"{t:.3f}")
    console.print(table)
    met = "" if result["target_met"] else "  (target NOT met: closest threshold kept)"
    console.print(
        f"{result['rule']} threshold {result['threshold']:.4f}: {result['score_name']} {result['score']:.4f} "
        f"(final exit {result['reference_score']:.4f}), layer speed-up {result['layer_speedup']:.2f}x, "
        f"FLOPs speed-up {result['flops_speedup']:.2f}x{met}"
    )
