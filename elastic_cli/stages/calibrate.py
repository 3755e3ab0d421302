"""`elastic calibrate`: on the calibration split (carved from train, never trained on), fit per-exit
temperatures and choose the exit threshold that meets the target; write calibration.json beside the
checkpoint. The evaluation split is never looked at here."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from rich.table import Table

from elastic_cli import calibration, checkpoint, exits, files, plots, run_record, tracking
from elastic_cli.config import RootConfig
from elastic_cli.data import load_task_data
from elastic_cli.errors import UserError
from elastic_cli.metrics import score_name
from elastic_cli.models.precision import check_precision
from elastic_cli.stages import subjects
from elastic_cli.stages.common import (
    console,
    exit_scores,
    seed_everything,
    setup_device,
)


def run(cfg: RootConfig, raw: DictConfig) -> float:
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    folder = checkpoint.checkpoint_dir(cfg)
    info = subjects.describe(folder)  # fails early, before a run is opened, when there is none
    subjects.check_matches(folder, info, cfg)
    if not files.writable_dir(folder):
        raise UserError(
            f"the checkpoint folder {folder} is read-only and calibrate writes calibration.json into it: "
            "copy the checkpoint (cp -r) to a folder of yours and calibrate that with ckpt="
        )
    rule = exits.build_rule(cfg.method.exit)
    exits.check_applicable(rule, info.num_labels, info.has_lte, info.num_exits)
    check_precision(cfg.device)

    with tracking.stage_run(cfg, raw, checkpoint=folder, record=subjects.record(folder, info)):
        subject = subjects.open_subject(folder, device, cfg.device)
        data = load_task_data(cfg.task, cfg.seed)
        inputs = subject.encode(data.calibration)
        cached = subject.outputs("calibration", inputs, cfg, device)
        signals = cached.signals
        names = subject.exit_names
        # temperatures rescale class probabilities: nothing to fit for a regression's single output
        scale = rule.temperature_scaling if cfg.calibrate.temperature is None else cfg.calibrate.temperature
        # a certified target tests thresholds fixed before the data is seen: temperatures fitted on this
        # split, or a grid placed on it, would make the tested rule depend on the sample
        certified = cfg.calibrate.target == "consistency"
        if certified:
            scale = False
        temperatures = (
            calibration.fit_temperatures(signals.logits, torch.as_tensor(cached.labels))
            if scale and info.num_labels > 1
            else torch.ones(len(names))
        )
        curve = subject.threshold_curve(
            rule, cached, subject.costs(inputs), temperatures, cfg.calibrate.grid_size, on_data=not certified
        )
        accs = exit_scores(signals, cached.labels)
        reference = float(accs[-1])
        chosen = calibration.choose_threshold(
            curve,
            cfg.calibrate.target,
            reference_accuracy=reference,
            tolerance=cfg.calibrate.tolerance,
            speedup=cfg.calibrate.speedup,
            super_fraction=cfg.calibrate.super_fraction,
            larger_is_slower=rule.larger_is_slower,
            speed_column=subject.speed_column,
            score_column="score",
            epsilon=cfg.calibrate.epsilon,
            delta=cfg.calibrate.delta,
            n_examples=len(cached.labels),
        )
        result = checkpoint.CalibrationFile(
            rule=rule.name,
            rule_settings=exits.rule_settings(cfg.method.exit),
            threshold=float(chosen["threshold"]),
            temperatures=[float(t) for t in temperatures],
            exit_layers=subject.exit_layers,
            exits=names,
            target=cfg.calibrate.target,
            tolerance=cfg.calibrate.tolerance,
            speedup_target=cfg.calibrate.speedup,
            target_met=bool(chosen["target_met"]),
            score_name=score_name(info.num_labels),
            reference_score=reference,
            score=float(chosen["score"]),
            layer_speedup=float(chosen["layer_speedup"]),
            flops_speedup=float(chosen.get("flops_speedup", float("nan"))),
            super_fraction=float(chosen["super_fraction"]),
            speed_column=subject.speed_column,
            n_examples=int(len(cached.labels)),
            weights=subject.fingerprint(),
            extra=(
                {
                    "epsilon": cfg.calibrate.epsilon,
                    "delta": cfg.calibrate.delta,
                    "consistency": float(chosen["consistency"]),
                    "inconsistency_bound": float(chosen["inconsistency_bound"]),
                }
                if certified
                else {}
            ),
        )
        result.save(folder)

        tracking.log_metrics(
            {
                "calibration/threshold": result.threshold,
                "calibration/score": result.score,
                "calibration/reference_score": reference,
                "calibration/layer_speedup": result.layer_speedup,
                "calibration/flops_speedup": result.flops_speedup,
                "calibration/super_fraction": result.super_fraction,
                "calibration/target_met": float(result.target_met),
                **{f"calibration/temperature_{name}": float(t) for name, t in zip(names, temperatures)},
                **{f"calibration/exit_{result.score_name}_{name}": float(a) for name, a in zip(names, accs)},
            }
        )
        tracking.log_dict(result.to_json(), "calibration.json")
        tracking.log_dataframe(curve, "calibration_curve.csv")
        tracking.log_figure(
            plots.pareto_figure(
                curve,
                subject.speed_column,
                "score",
                "threshold",
                f"{info.method} / {info.backbone} / {info.task} (calibration split): "
                f"{result.score_name} over thresholds",
                x_label=plots.axis_label(subject.speed_column),
                y_label=plots.axis_label(result.score_name),
                operating_point=(
                    float(chosen[subject.speed_column]),
                    result.score,
                    f"calibrated t={run_record.threshold_text(result.threshold)}",
                ),
                static_point=(1.0, reference),
            ),
            "calibration_curve.png",
        )
        _print(result, names, accs)
        return float(result.score)


def _print(result: checkpoint.CalibrationFile, names: list[str], accs) -> None:
    table = Table(title=f"calibration ({result.n_examples} examples)")
    table.add_column("exit", justify="right")
    table.add_column(result.score_name, justify="right")
    table.add_column("temperature", justify="right")
    for name, a, t in zip(names, accs, result.temperatures):
        table.add_row(name, f"{a:.4f}", f"{t:.3f}")
    console.print(table)
    met = "" if result.target_met else "  (target NOT met: closest threshold kept)"
    if "epsilon" in result.extra:
        x = result.extra
        console.print(
            f"consistency: {100 * x['consistency']:.1f}% of calibration examples keep the final exit's "
            f"prediction; certified (probability >= {1 - x['delta']:.2f}) that at most "
            f"{100 * x['inconsistency_bound']:.1f}% (epsilon {100 * x['epsilon']:.1f}%) of future ones differ",
            highlight=False,
        )
    console.print(
        f"{result.rule} threshold {result.threshold:.4f}: {result.score_name} {result.score:.4f} "
        f"(final exit {result.reference_score:.4f}), layer speed-up {result.layer_speedup:.2f}x, "
        f"FLOPs speed-up {result.flops_speedup:.2f}x, {100 * result.super_fraction:.1f}% reach the last "
        f"exit{met}"
    )
