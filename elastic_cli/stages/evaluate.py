"""`elastic evaluate`: on the evaluation split(s), for one threshold (by default the calibrated one):
task metric, per-exit accuracy, exit histogram, layer and FLOPs speed-up from one cached all-exits
pass, the whole threshold curve from the same pass, and real batch-1 latency and batched throughput of
the adaptive model beside the static model, measured in the same run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from elastic_cli import checkpoint, exits, oracle, plots, run_record, timing, tracking
from elastic_cli.config import RootConfig
from elastic_cli.cost import ExitCosts
from elastic_cli.data import load_task_data
from elastic_cli.errors import UserError
from elastic_cli.metrics import compute_metrics, main_metric, score_name
from elastic_cli.models.precision import check_precision, precision_name
from elastic_cli.progress import progress
from elastic_cli.stages import subjects
from elastic_cli.stages.common import (
    CachedOutputs,
    console,
    exit_scores,
    seed_everything,
    setup_device,
)


def _operating_point(
    cfg: RootConfig, calib: checkpoint.CalibrationFile | None, exit_names: list[str]
) -> tuple[float, torch.Tensor | None, str]:
    """The threshold and temperatures to evaluate, and where the threshold came from."""
    temperatures = None
    if calib is not None and calib.exits == exit_names:
        temperatures = torch.tensor(calib.temperatures)
    if cfg.method.exit.threshold is not None:
        return float(cfg.method.exit.threshold), temperatures, "config"
    if calib is None:
        raise UserError(
            "no exit threshold: run `elastic calibrate` with the same method/backbone/task first, "
            "or set method.exit.threshold=..."
        )
    if calib.rule != cfg.method.exit.name:
        raise UserError(
            f"calibration.json was made for the {calib.rule} rule, not {cfg.method.exit.name}: "
            "re-run `elastic calibrate` or set method.exit.threshold=..."
        )
    # (calibrations written before rule settings were recorded carry none: nothing to compare)
    recorded, ours = calib.rule_settings, exits.rule_settings(cfg.method.exit)
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
    return float(calib.threshold), temperatures, "calibration"


def run(cfg: RootConfig, raw: DictConfig) -> float:
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    folder = checkpoint.checkpoint_dir(cfg)
    info = subjects.describe(folder)
    subjects.check_matches(folder, info, cfg)
    rule = exits.build_rule(cfg.method.exit)
    exits.check_applicable(rule, info.num_labels, info.has_lte, info.num_exits)

    check_precision(cfg.device)

    with tracking.stage_run(cfg, raw, checkpoint=folder, record=subjects.record(folder, info)):
        subject = subjects.open_subject(folder, device, cfg.device)
        # another precision than float32 is measured against the float32 model, in the same run
        float32 = None if subject.precision == "float32" else subjects.open_subject(folder, device)
        calib = checkpoint.CalibrationFile.load(folder)
        threshold, temperatures, source = _operating_point(cfg, calib, subject.exit_names)
        tracking.rename_run(
            run_record.run_name(
                "evaluate", info.method, info.backbone, rule.name, threshold, subject.precision
            )
        )
        data = load_task_data(cfg.task, cfg.seed)
        scaled = temperatures is not None and bool((temperatures != 1.0).any())
        consistency_target = None
        if source == "calibration" and calib is not None and "epsilon" in calib.extra:
            # what the certified threshold promised, beside the consistency evaluate measures
            consistency_target = 1.0 - float(calib.extra["epsilon"])
            tracking.log_metrics({"consistency_target": consistency_target})
        tracking.log_params(
            {
                "exit.threshold_source": source,
                "exit.temperature_scaled": scaled,
                # 12 digits: a grid's 0.6900000000000001 reads 0.69
                **({"exit.threshold": f"{threshold:.12g}"} if cfg.method.exit.threshold is None else {}),
            }
        )
        headline: dict[str, float] = {}
        who = f"{info.method} / {info.backbone} / {info.task}"
        for i, (split, examples) in enumerate(data.evals.items()):
            inputs = subject.encode(examples)
            cached = subject.outputs(split, inputs, cfg, device)
            costs = subject.costs(inputs)
            decisions = subject.decide(rule, cached, costs, threshold, temperatures)
            scores = _score_split(cfg, split, rule, decisions, temperatures, cached, subject, costs)
            scores.log(subject.histogram_steps, cfg.evaluate.save_predictions, who)
            if i == 0:
                headline = scores.metrics()
                if float32 is not None:
                    reference = _float32_scores(
                        cfg, split, float32, inputs, rule, threshold, temperatures, device
                    )
                    full_depth = _task_metric(cfg, cached.signals.logits[:, -1], cached.labels)
                    headline.update(reference, full_depth_task_metric=full_depth)
                    console.print(
                        f"{subject.precision} against float32: {main_metric(cfg.task.metric)} "
                        f"{scores.task_metric:.4f} vs {reference['float32_task_metric']:.4f} at this threshold, "
                        f"{full_depth:.4f} vs {reference['float32_full_depth_task_metric']:.4f} at full depth",
                        highlight=False,
                    )
                if cfg.evaluate.latency:
                    headline.update(
                        _measure_latency(
                            cfg, subject, inputs, decisions, rule, threshold, temperatures, device, float32
                        )
                    )
                tracking.log_metrics(headline)
                # the unprefixed series for plotting; its table and figure are under <split>/
                tracking.log_exit_histogram(scores.exit_counts, subject.histogram_steps, files=False)
                if scores.layer_tokens is not None:
                    tracking.log_layer_tokens(scores.layer_tokens, files=False)
            _print(cfg, source, scores, consistency_target)
        if cfg.evaluate.latency:
            _print_latency(headline)
            noise = timing_noise(headline, headline.get("layer_speedup", 1.0))
            if noise is not None:
                console.print(
                    f"[yellow]warning:[/] timings look noisy, the machine was busy ({noise}): "
                    "re-run evaluate on a quiet machine for latency numbers to trust",
                    highlight=False,
                )
                tracking.set_tag("elastic.timing_noisy", noise)
        return float(headline.get("task_metric", float("nan")))


@dataclass
class SplitScores:
    """What evaluate measures on one evaluation split at one threshold: the task metric, each exit's
    score and share of the examples, the speed-ups, the predictions and (evaluate.grid) the threshold
    curve. `metrics` names the MLflow metrics and `log` is the one place they and the split's artifacts
    are logged; evaluate writes no scores file of its own."""

    split: str
    score_name: str  # what one exit is scored by: accuracy, or pearson for a regression
    task_scores: dict[str, float]  # compute_metrics: accuracy (+ f1 or matthews), or pearson and spearman
    task_metric: float  # the task's headline value (metrics.main_metric), one of task_scores
    threshold: float
    mean_exit_layer: float
    layer_speedup: float
    flops_speedup: float
    static_gflops_per_example: float
    adaptive_gflops_per_example: float
    exit_names: list[str]
    exit_counts: list[int]  # examples leaving at each exit
    exit_scores: list[float]  # each exit's own score on every example
    predictions: pd.DataFrame  # one row per example: label, prediction, exit, exit layer, tokens, ...
    curve: pd.DataFrame | None = None  # the rule's whole threshold curve (evaluate.grid)
    layer_tokens: list[float] | None = None  # mean tokens entering each layer (a length-reducing model)
    oracle: dict[str, float] | None = None  # both oracles' accuracy and speed-ups (elastic_cli/oracle.py)

    @property
    def n_examples(self) -> int:
        return sum(self.exit_counts)

    def exit_fractions(self) -> np.ndarray:
        """The share of the examples leaving at each exit (a cascade's swift/super split)."""
        return np.asarray(self.exit_counts) / max(1, self.n_examples)

    def metrics(self) -> dict[str, float]:
        """The split's MLflow metrics, by their names (logged as <split>/<name>; the first split's also
        as <name>)."""
        fractions = self.exit_fractions()
        return {
            **self.task_scores,
            "task_metric": self.task_metric,
            "threshold": self.threshold,
            "mean_exit_layer": self.mean_exit_layer,
            "layer_speedup": self.layer_speedup,
            "flops_speedup": self.flops_speedup,
            "static_gflops_per_example": self.static_gflops_per_example,
            "adaptive_gflops_per_example": self.adaptive_gflops_per_example,
            "n_examples": float(self.n_examples),
            # the split between exits (a cascade's swift/super split): fraction leaving at each, and
            # reaching the last
            "super_fraction": float(fractions[-1]),
            **{f"exit_fraction_{n}": float(f) for n, f in zip(self.exit_names, fractions)},
            **{f"exit_{self.score_name}_{n}": a for n, a in zip(self.exit_names, self.exit_scores)},
            **self.token_metrics(),
            **(self.oracle or {}),
        }

    def token_metrics(self) -> dict[str, float]:
        """A length-reducing model's mean tokens entering the last layer and their share of the input."""
        if self.layer_tokens is None:
            return {}
        full = float(self.predictions["tokens"].mean())
        last = self.layer_tokens[-1]
        return {
            "mean_tokens_input": full,
            "mean_tokens_last_layer": last,
            "token_fraction_last_layer": last / full,
        }

    def log(self, histogram_steps: list[int], save_predictions: bool, who: str) -> None:
        """Log to the stage's run, under <split>/: the metrics, the exit histogram, predictions.csv (when
        `save_predictions`) and the threshold curve's table and figure (when there is one)."""
        split = self.split
        tracking.log_metrics({f"{split}/{k}": v for k, v in self.metrics().items()})
        tracking.log_exit_histogram(self.exit_counts, histogram_steps, prefix=f"{split}/", who=who)
        if self.layer_tokens is not None:
            tracking.log_layer_tokens(self.layer_tokens, prefix=f"{split}/", who=who)
        if save_predictions:
            tracking.log_dataframe(self.predictions, f"{split}/predictions.csv")
        if self.curve is not None:
            tracking.log_dataframe(self.curve, f"{split}/threshold_curve.csv")
            tracking.log_figure(self.curve_figure(who), f"{split}/threshold_curve.png")

    def curve_figure(self, who: str) -> Any:
        """The threshold curve (score against FLOPs speed-up), with the evaluated threshold and the static
        model (the last exit, speed-up 1) marked; `who` is `method / backbone / task`."""
        assert self.curve is not None
        evaluated = self.task_scores.get(self.score_name)
        point = None
        if evaluated is not None:
            point = (
                self.flops_speedup,
                evaluated,
                f"evaluated t={run_record.threshold_text(self.threshold)}",
            )
        return plots.pareto_figure(
            self.curve,
            "flops_speedup",
            "score",
            "threshold",
            f"{who} ({self.split} split): {self.score_name} over thresholds",
            x_label=plots.axis_label("flops_speedup"),
            y_label=plots.axis_label(self.score_name),
            operating_point=point,
            static_point=(1.0, self.exit_scores[-1]),
        )


def _score_split(
    cfg: RootConfig,
    split: str,
    rule: exits.ExitRule,
    decisions: subjects.Decisions,
    temperatures: torch.Tensor | None,
    cached: CachedOutputs,
    subject: subjects.Subject,
    costs: ExitCosts,
) -> SplitScores:
    signals = cached.signals
    names = subject.exit_names
    chosen = decisions.logits
    regression = chosen.shape[-1] == 1
    preds = chosen[:, 0].numpy() if regression else chosen.argmax(dim=-1).numpy()
    exit_idx_np = decisions.exit_index
    layers_run = costs.exit_layers[exit_idx_np]
    scores = compute_metrics(cfg.task.metric, preds, cached.labels)
    cost = costs.at(exit_idx_np, decisions.adaptive_flops)
    per_exit = exit_scores(signals, cached.labels)
    counts = np.bincount(exit_idx_np, minlength=len(names))
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
    layer_tokens = None
    if decisions.layer_tokens is not None:
        columns["tokens_last_layer"] = decisions.layer_tokens[:, -1]
        layer_tokens = [float(x) for x in decisions.layer_tokens.mean(axis=0)]
    curve = None
    if cfg.evaluate.grid:
        curve = subject.threshold_curve(rule, cached, costs, temperatures, cfg.evaluate.grid_size)
    bounds = None
    if not regression and len(names) > 1:  # one exit (a length-reducing model) has no exit to choose
        bounds = oracle.oracle_metrics(signals.logits.argmax(dim=-1).numpy(), cached.labels, costs)
        # the share of examples whose prediction is the final exit's (calibrate.target=consistency's aim)
        bounds["consistency"] = float((preds == signals.logits[:, -1].argmax(dim=-1).numpy()).mean())
        if curve is not None:
            bounds["oracle_room_ratio"] = oracle.room_ratio(
                curve, float(per_exit[-1]), bounds["oracle_consistency_flops_speedup"]
            )
    return SplitScores(
        split=split,
        score_name=score_name(chosen.shape[-1]),
        task_scores=scores,
        task_metric=scores[main_metric(cfg.task.metric)],
        threshold=decisions.threshold,
        mean_exit_layer=float(layers_run.mean()),
        layer_speedup=cost["layer_speedup"],
        flops_speedup=cost["flops_speedup"],
        static_gflops_per_example=cost["static_gflops_per_example"],
        adaptive_gflops_per_example=cost["adaptive_gflops_per_example"],
        exit_names=list(names),
        exit_counts=counts.tolist(),
        exit_scores=[float(a) for a in per_exit],
        predictions=pd.DataFrame(columns),
        curve=curve,
        layer_tokens=layer_tokens,
        oracle=bounds,
    )


def _float32_scores(
    cfg: RootConfig,
    split: str,
    float32: subjects.Subject,
    inputs: Any,
    rule: exits.ExitRule,
    threshold: float,
    temperatures: torch.Tensor | None,
    device: torch.device,
) -> dict[str, float]:
    """The float32 model's task metric at the same threshold and at full depth, beside a run in another
    precision (device.dtype, device.quantize): what the precision costs in accuracy."""
    cached = float32.outputs(split, inputs, cfg, device)
    chosen = float32.decide(rule, cached, float32.costs(inputs), threshold, temperatures).logits
    return {
        "float32_task_metric": _task_metric(cfg, chosen, cached.labels),
        "float32_full_depth_task_metric": _task_metric(cfg, cached.signals.logits[:, -1], cached.labels),
    }


def _task_metric(cfg: RootConfig, logits: torch.Tensor, labels: np.ndarray) -> float:
    """The task's headline metric (accuracy, F1, Matthews, Pearson) of the predictions in `logits` [N, C]."""
    preds = logits[:, 0].numpy() if logits.shape[-1] == 1 else logits.argmax(dim=-1).numpy()
    return float(compute_metrics(cfg.task.metric, preds, labels)[main_metric(cfg.task.metric)])


def _measure_latency(
    cfg: RootConfig,
    subject: subjects.Subject,
    inputs: Any,
    decisions: subjects.Decisions,
    rule: exits.ExitRule,
    threshold: float,
    temperatures: torch.Tensor | None,
    device: torch.device,
    float32: subjects.Subject | None = None,
) -> dict[str, float]:
    """Batch-1 latency (p50/p90) and batched throughput, adaptive beside static (the full model, or a
    cascade's last model alone), in the same process; with `float32` (a run in another precision), the
    float32 static model's batch-1 latency too, timed in the same interleaved loop."""
    n = len(decisions.exit_index)
    rng = np.random.default_rng(cfg.seed)
    subset = np.sort(rng.choice(n, size=min(cfg.evaluate.latency_samples, n), replace=False))
    singles = {int(subject.rows(b)[0]): b for b in subject.batches(inputs, 1, subset.tolist(), device)}

    def static(i: int) -> object:
        return subject.static(singles[i])

    def adaptive(i: int) -> object:
        return subject.adaptive(singles[i], rule, threshold, temperatures)

    timed: dict[str, Any] = {"static": static, "adaptive": adaptive}
    if float32 is not None:
        timed["static_float32"] = lambda i: float32.static(singles[i])

    fewer = ""
    if tracking.current_sweep_dir() is not None:  # conf/sweep/thresholds.yaml times fewer per child
        fewer = " (a sweep's child times fewer; set evaluate.latency_samples=N for more)"
    console.print(
        f"timing batch-1 latency on {len(subset)} of {n} examples, {', '.join(timed)} interleaved{fewer}"
    )
    with progress() as bar:
        task = bar.add_task("batch-1 latency", total=len(subset), info="")
        ms = timing.latency_per_example(
            timed,
            subset.tolist(),
            cfg.evaluate.latency_warmup,
            after_each=lambda: bar.advance(task, 1),
        )
    out: dict[str, float] = {}
    for name, values in ms.items():
        for k, v in timing.summarize_ms(values).items():
            out[f"latency_{name}_{k}"] = v
    out["latency_speedup_p50"] = out["latency_static_p50_ms"] / out["latency_adaptive_p50_ms"]
    out["latency_speedup_mean"] = out["latency_static_mean_ms"] / out["latency_adaptive_mean_ms"]
    if float32 is not None:
        # the precision's own speed-up (static over static), and both together (float32 static over
        # the adaptive model in this precision)
        base = out["latency_static_float32_mean_ms"]
        out["latency_precision_speedup_mean"] = base / out["latency_static_mean_ms"]
        out["latency_combined_speedup_mean"] = base / out["latency_adaptive_mean_ms"]

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

    # honesty check: the real adaptive path, in the timed batches, must agree with the decisions scored
    # (simulated from cached outputs, or a length-reducing model's pass in other batches): same exit,
    # same prediction, same tokens kept
    agree = []
    with torch.inference_mode():
        for b in chunks:
            res = subject.adaptive(b, rule, threshold, temperatures)
            exit_index, prediction, tokens = decisions.rows(subject.rows(b))
            same = (res.exit_index.cpu() == exit_index) & (res.logits.argmax(-1).cpu() == prediction)
            if tokens is not None and res.layer_tokens is not None:
                same &= (res.layer_tokens.cpu() == tokens).all(dim=1)
            agree.append(same)
    out["adaptive_agreement"] = float(torch.cat(agree).float().mean())
    return out


# a static p90 this many times its p50 (the static model's latency varies with length alone), an
# adaptive p90 this many times the static p90 (it runs at most the same layers, plus its exits), or an
# adaptive model slower in batches than the static one while it runs this many times fewer layers: the
# timings met a busy machine. (An adaptive p90 far above its own p50 is normal: most examples leave early,
# the slowest tenth run the whole model.)
NOISY_P90_OVER_P50 = 3.0
NOISY_ADAPTIVE_OVER_STATIC_P90 = 1.5
NOISY_LAYER_SPEEDUP = 1.3


def timing_noise(h: dict[str, float], layer_speedup: float) -> str | None:
    """Why the latency numbers look disturbed by other work on the machine, or None."""
    p50, p90 = h.get("latency_static_p50_ms"), h.get("latency_static_p90_ms")
    if p50 and p90 and p90 > NOISY_P90_OVER_P50 * p50:
        return f"the static p90 ({p90:.1f} ms) is over {NOISY_P90_OVER_P50:g}x its p50 ({p50:.1f} ms)"
    adaptive = h.get("latency_adaptive_p90_ms")
    if p90 and adaptive and adaptive > NOISY_ADAPTIVE_OVER_STATIC_P90 * p90:
        return (
            f"the adaptive p90 ({adaptive:.1f} ms) is over {NOISY_ADAPTIVE_OVER_STATIC_P90:g}x the static "
            f"p90 ({p90:.1f} ms)"
        )
    if h.get("throughput_speedup", 1.0) < 1.0 and layer_speedup > NOISY_LAYER_SPEEDUP:
        return (
            f"adaptive throughput is below static ({h['throughput_speedup']:.2f}x) although it runs "
            f"{layer_speedup:.2f}x fewer layers"
        )
    return None


def _print(
    cfg: RootConfig, source: str, scores: SplitScores, consistency_target: float | None = None
) -> None:
    # no markup in the title: rich would take "[validation]" for a style tag and drop it
    precision = "" if precision_name(cfg.device) == "float32" else f", {precision_name(cfg.device)}"
    title = (
        f"{cfg.method.name} / {cfg.backbone.name} / {cfg.task.name} ({scores.split} split{precision}): "
        f"{cfg.method.exit.name} threshold {scores.threshold:.4f} ({source})"
    )
    table = Table(title=Text(title))
    table.add_column("exit", justify="right")
    table.add_column(f"exit {scores.score_name}", justify="right")
    table.add_column("exited here", justify="right")
    total = max(1, sum(scores.exit_counts))
    for exit_name, count, score in zip(scores.exit_names, scores.exit_counts, scores.exit_scores):
        table.add_row(exit_name, f"{score:.4f}", f"{count} ({100 * count / total:.1f}%)")
    console.print(table)
    console.print(
        f"{main_metric(cfg.task.metric)} {scores.task_metric:.4f} | mean exit layer {scores.mean_exit_layer:.2f} | "
        f"layer speed-up {scores.layer_speedup:.2f}x | FLOPs speed-up {scores.flops_speedup:.2f}x"
    )
    if scores.oracle is not None:
        o = scores.oracle
        console.print(
            f"oracles: consistent (full-depth predictions) at {o['oracle_consistency_flops_speedup']:.2f}x "
            f"FLOPs; correct ({o['oracle_correct_accuracy']:.4f}) at {o['oracle_correct_flops_speedup']:.2f}x"
            + (
                f"; the rule reaches {o['oracle_room_ratio']:.2f} of the consistent oracle's speed-up "
                "within 1 point of full depth"
                if np.isfinite(o.get("oracle_room_ratio", float("nan")))
                else ""
            ),
            highlight=False,
        )
    if consistency_target is not None and scores.oracle is not None:
        achieved = scores.oracle["consistency"]
        console.print(
            f"consistency: {100 * achieved:.1f}% of {scores.split} examples keep the final exit's prediction; "
            f"calibrate.target=consistency certified >= {100 * consistency_target:.1f}% on data like the "
            f"calibration split's: {'held' if achieved >= consistency_target else 'missed'} here",
            highlight=False,
        )
    if scores.layer_tokens is not None:
        full = scores.token_metrics()["mean_tokens_input"]
        kept = " ".join(f"{t:.1f}" for t in scores.layer_tokens)
        console.print(f"mean tokens: {full:.1f} in, entering layers 1..{len(scores.layer_tokens)}: {kept}")


def _print_latency(h: dict[str, float]) -> None:
    if "latency_static_p50_ms" not in h:
        return
    console.print(
        f"batch-1 latency p50/p90: static {h['latency_static_p50_ms']:.2f}/{h['latency_static_p90_ms']:.2f} ms, "
        f"adaptive {h['latency_adaptive_p50_ms']:.2f}/{h['latency_adaptive_p90_ms']:.2f} ms "
        f"(speed-up {h['latency_speedup_mean']:.2f}x of the mean, {h['latency_speedup_p50']:.2f}x of p50) "
        f"| throughput static {h['throughput_static']:.1f}/s, "
        f"adaptive {h['throughput_adaptive']:.1f}/s | adaptive agrees with simulation on "
        f"{100 * h['adaptive_agreement']:.1f}% of timed examples"
    )
    if "latency_precision_speedup_mean" in h:
        console.print(
            f"against the float32 static model ({h['latency_static_float32_mean_ms']:.2f} ms mean): this "
            f"precision's static {h['latency_precision_speedup_mean']:.2f}x, adaptive "
            f"{h['latency_combined_speedup_mean']:.2f}x (mean latency)",
            highlight=False,
        )
