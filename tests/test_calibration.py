"""Temperature fitting, the threshold curve (accuracy and cost at every threshold, for a multi-exit model or
a cascade of separately trained models), exit_indices against simulate, choosing a threshold for a target
(accuracy within a tolerance, a speedup, a super-model fraction), and calibration.json."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from elastic_cli import calibration, checkpoint, exits
from elastic_cli.calibration import (
    choose_threshold,
    exit_indices,
    fit_temperature,
    fit_temperatures,
    threshold_curve,
)
from elastic_cli.config import ExitRuleConfig
from elastic_cli.cost import EncoderDims, ExitCosts, speedups
from elastic_cli.errors import UserError
from elastic_cli.exits import EnergyExitConfig, ExitSignals, PatienceExitConfig, simulate
from elastic_cli.metrics import pearson

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))

# the rules that decide on exit outputs (token_drop scales a length-reducing model instead)
OUTPUT_RULES = sorted(n for n, r in exits.RULES.items() if "multi_exit" in r.model_shapes)


def _energy(temperature: float = 1.0) -> exits.Energy:
    rule = exits.build_rule(EnergyExitConfig(temperature=temperature))
    assert isinstance(rule, exits.Energy)
    return rule


def sampled_logits(
    n: int, num_classes: int, true_scale: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z * true_scale): the calibrating temperature is 1/true_scale."""
    gen = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, num_classes, generator=gen)
    labels = torch.multinomial((z * true_scale).softmax(dim=-1), 1, generator=gen).squeeze(1)
    return z, labels


@pytest.mark.parametrize("true_scale", [0.5, 2.0])
def test_temperature_recovers_a_known_scale(true_scale):
    z, labels = sampled_logits(20_000, 4, true_scale, seed=0)
    assert fit_temperature(z, labels) == pytest.approx(1.0 / true_scale, rel=0.05)


def test_calibrated_logits_keep_temperature_near_one():
    z, labels = sampled_logits(20_000, 3, 1.0, seed=1)
    assert fit_temperature(z, labels) == pytest.approx(1.0, abs=0.05)


def test_temperature_is_one_when_nothing_improves_and_finite_when_separable():
    labels = torch.tensor([0, 1, 2, 1])
    # constant logits: every T gives the same NLL
    assert fit_temperature(torch.zeros(4, 3), labels) == 1.0
    # perfectly separated: the NLL falls as T -> 0; the fit stays bounded and never does worse than T = 1
    separable = 5.0 * torch.nn.functional.one_hot(labels, 3).float()
    t = fit_temperature(separable, labels)
    assert 0.0 < t < 1.0 and math.isfinite(t)


def test_fit_temperatures_one_per_exit():
    z_hot, labels = sampled_logits(8_000, 3, 0.5, seed=2)
    z_cold = z_hot / 4.0  # the same logits at a quarter of the scale need a quarter of the temperature
    temps = fit_temperatures(torch.stack([z_hot, z_cold], dim=1), labels.numpy())
    assert temps.shape == (2,)
    assert temps[0].item() == pytest.approx(2.0, rel=0.08)
    assert temps[1].item() == pytest.approx(temps[0].item() / 4.0, rel=1e-3)


def confident(p: float, cls: int) -> list[float]:
    """Two-class logits whose softmax puts probability p on class `cls`."""
    pair = [math.log(p), math.log(1.0 - p)]
    return pair if cls == 0 else pair[::-1]


# three examples, exits after layers 1, 2 and 4; (probability of the prediction, predicted class) per exit
HAND = ExitSignals(
    torch.tensor(
        [
            [confident(0.95, 0), confident(0.90, 0), confident(0.97, 1)],  # label 0
            [confident(0.60, 0), confident(0.85, 1), confident(0.99, 1)],  # label 1
            [confident(0.55, 1), confident(0.70, 0), confident(0.75, 0)],  # label 1
        ]
    )
)
HAND_LABELS = np.array([0, 1, 1])


def test_threshold_curve_on_hand_made_exits():
    curve = threshold_curve(MAXPROB, HAND, HAND_LABELS, [1, 2, 4], [0.5, 0.8, 0.92, 1.0], None)
    # 0.5: all leave at exit 0 (layers 1,1,1); 0.8: exits 0,1,2 (layers 1,2,4);
    # 0.92: exits 0,2,2 (layers 1,4,4); 1.0: everyone runs to layer 4
    np.testing.assert_allclose(curve["accuracy"], [2 / 3, 2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(curve["score"], curve["accuracy"])  # classification: the score is accuracy
    np.testing.assert_allclose(curve["mean_exit_layer"], [1.0, 7 / 3, 3.0, 4.0])
    np.testing.assert_allclose(curve["layer_speedup"], [4.0, 12 / 7, 4 / 3, 1.0])
    np.testing.assert_allclose(curve["exit_frac_L1"], [1.0, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(curve["exit_frac_L2"], [0.0, 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(curve["exit_frac_L4"], [0.0, 1 / 3, 2 / 3, 1.0])
    assert "flops_speedup" not in curve


def test_temperatures_change_who_exits():
    # a huge temperature on exit 0 flattens it to 50/50: nobody leaves there at 0.8
    temps = torch.tensor([100.0, 1.0, 1.0])
    curve = threshold_curve(MAXPROB, HAND, HAND_LABELS, [1, 2, 4], [0.8], temps)
    assert curve["exit_frac_L1"].item() == 0.0
    assert curve["exit_frac_L2"].item() == pytest.approx(2 / 3)  # examples 0 (p=0.90) and 1 (p=0.85)


def test_threshold_curve_agrees_with_simulate_and_speedups():
    gen = torch.Generator().manual_seed(3)
    signals = ExitSignals(2.0 * torch.randn(300, 4, 3, generator=gen))
    labels = torch.randint(0, 3, (300,), generator=gen).numpy()
    temps = torch.tensor([1.5, 1.2, 0.9, 1.0])
    n_tokens = torch.randint(5, 60, (300,), generator=gen).numpy()
    dims = EncoderDims(num_layers=6, hidden=16, intermediate=32, heads=2, num_labels=3)
    exit_layers = [1, 2, 4, 6]
    thresholds = MAXPROB.grid(3, 4, 9).tolist()

    curve = threshold_curve(MAXPROB, signals, labels, exit_layers, thresholds, temps, n_tokens, dims)
    for row, threshold in zip(curve.itertuples(), thresholds, strict=True):
        idx, chosen = simulate(MAXPROB, signals, threshold, temps)
        assert row.accuracy == pytest.approx((chosen.argmax(-1).numpy() == labels).mean())
        layers_run = np.asarray(exit_layers)[idx.numpy()]
        expected = speedups(n_tokens, layers_run, idx.numpy() + 1, dims)
        assert row.flops_speedup == pytest.approx(expected["flops_speedup"])
        assert row.layer_speedup == pytest.approx(expected["layer_speedup"])
        assert row.gflops_per_example == pytest.approx(expected["adaptive_gflops_per_example"])
    fractions = curve[[f"exit_frac_L{layer}" for layer in exit_layers]].sum(axis=1)
    np.testing.assert_allclose(fractions, 1.0)


@pytest.mark.parametrize("regression", [False, True])
def test_threshold_curve_in_chunks_of_thresholds_equals_one_pass(monkeypatch, regression):
    """The curve holds (threshold, example) cells in chunks of thresholds (memory bounded on a large split):
    any chunking gives the same curve, to the bit."""
    gen = torch.Generator().manual_seed(5)
    c = 1 if regression else 3
    signals = ExitSignals(2.0 * torch.randn(200, 4, c, generator=gen).cumsum(dim=1))
    labels = torch.randn(200, generator=gen).numpy() if regression else torch.randint(0, 3, (200,)).numpy()
    rule = exits.build_rule(PatienceExitConfig()) if regression else MAXPROB
    dims = EncoderDims(num_layers=4, hidden=16, intermediate=32, heads=2, num_labels=c)
    costs = ExitCosts.multi_exit(torch.randint(5, 60, (200,), generator=gen).numpy(), [1, 2, 3, 4], dims)
    thresholds = rule.grid(c, 4, 11).tolist()
    temps = None if regression else torch.tensor([1.5, 1.2, 0.9, 1.0])
    whole = threshold_curve(rule, signals, labels, [1, 2, 3, 4], thresholds, temps, costs=costs)
    for cells in (200, 3 * 200, 7 * 200 + 1):  # 1, 3 and 7 thresholds a chunk (the last one shorter)
        monkeypatch.setattr(calibration, "_MAX_CURVE_CELLS", cells)
        chunked = threshold_curve(rule, signals, labels, [1, 2, 3, 4], thresholds, temps, costs=costs)
        pd.testing.assert_frame_equal(chunked, whole, check_exact=True)


def test_threshold_curve_prices_a_cascade_and_names_its_models() -> None:
    # two models; swift scores (T = 1, equal logits): 0.5, 1.5, 2.5, 3.5; swift right on rows 0 and 2
    swift_scores = torch.tensor([0.5, 1.5, 2.5, 3.5])
    swift = (swift_scores - math.log(3)).unsqueeze(1).expand(-1, 3).clone()
    swift[0, 1] += 1e-3  # a tiny margin sets the argmax without moving the score much
    swift[2, 2] += 1e-3
    swift[[1, 3], 2] += 1e-3
    super_ = torch.eye(3)[[1, 0, 2, 1]] * 5.0  # super is right everywhere
    labels = np.array([1, 0, 2, 1])
    signals = exits.ExitSignals(torch.stack([swift, super_], dim=1))
    d_swift = EncoderDims(num_layers=2, hidden=32, intermediate=64, heads=2, num_labels=3)
    d_super = EncoderDims(num_layers=4, hidden=64, intermediate=128, heads=4, num_labels=3)
    tokens = [np.array([5, 6, 7, 8]), np.array([6, 8, 7, 11])]
    costs = ExitCosts.cascade(tokens, [d_swift, d_super])
    thresholds = [0.0, 2.0, 3.0, 4.0]
    curve = threshold_curve(
        _energy(), signals, labels, [2, 6], thresholds, None, costs=costs, exit_names=["swift", "super"]
    )
    assert curve["super_fraction"].tolist() == [0.0, 0.5, 0.75, 1.0]
    assert curve["exit_frac_swift"].tolist() == [1.0, 0.5, 0.25, 0.0]
    # t = 2: rows 0, 1 go on (right at super), 2 and 3 stay (right, wrong); t = 3: only row 3 stays
    assert curve["accuracy"].tolist() == [0.5, 0.75, 0.75, 1.0]
    assert curve["mean_exit_layer"].tolist() == [2.0, 4.0, 5.0, 6.0]
    for t, row in zip(thresholds, curve.itertuples(), strict=True):
        idx = exits.simulate(_energy(), signals, t)[0].numpy()
        assert row.flops_speedup == pytest.approx(costs.at(idx)["flops_speedup"], rel=1e-12)
        assert row.layer_speedup == pytest.approx(4 / costs.exit_layers[idx].mean())


def test_threshold_curve_is_fast():
    gen = torch.Generator().manual_seed(4)
    signals = ExitSignals(torch.randn(10_000, 12, 3, generator=gen))
    labels = torch.randint(0, 3, (10_000,), generator=gen).numpy()
    dims = EncoderDims(num_layers=12, hidden=768, intermediate=3072, heads=12, num_labels=3)
    n_tokens = np.full(10_000, 128)
    args = (MAXPROB, signals, labels, list(range(1, 13)), MAXPROB.grid(3, 12, 100).tolist(), torch.ones(12))
    thresholds = args[4]

    def one_pass_per_threshold() -> None:  # what the curve replaces: a simulation per threshold
        for t in thresholds:
            exits.simulate(MAXPROB, signals, t)

    def curve_once() -> object:
        return threshold_curve(*args, n_tokens, dims)

    # ratios against that baseline, interleaved and the best of three: other work on the machine slows both
    curve_s, baseline_s = [], []
    for _ in range(3):
        for fn, times in ((curve_once, curve_s), (one_pass_per_threshold, baseline_s)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    assert min(curve_s) < 0.5 * min(baseline_s), (curve_s, baseline_s)
    assert len(curve_once()) == 100


def test_threshold_curve_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="exit_layers"):
        threshold_curve(MAXPROB, HAND, HAND_LABELS, [1, 4], [0.5], None)
    with pytest.raises(ValueError, match="n_tokens and dims"):
        threshold_curve(MAXPROB, HAND, HAND_LABELS, [1, 2, 4], [0.5], None, n_tokens=np.ones(3))
    with pytest.raises(ValueError, match="temperatures"):
        threshold_curve(MAXPROB, HAND, HAND_LABELS, [1, 2, 4], [0.5], torch.ones(2))


def test_exit_indices_shape():
    idx = exit_indices(MAXPROB, HAND, [0.5, 1.0], None)
    assert idx.tolist() == [[0, 0, 0], [2, 2, 2]]
    assert exit_indices(MAXPROB, HAND, [], None).shape == (0, 3)


@pytest.mark.parametrize("name", OUTPUT_RULES)
def test_exit_indices_equal_simulate_for_every_rule(name):
    gen = torch.Generator().manual_seed(6)
    signals = ExitSignals(2.0 * torch.randn(50, 5, 3, generator=gen), torch.rand(50, 5, generator=gen))
    rule = exits.build_rule(exits.RULES[name].schema(name=name))
    thresholds = rule.grid(3, 5, 6).tolist()
    temps = torch.tensor([1.4, 1.1, 0.9, 1.0, 1.2])
    idx = exit_indices(rule, signals, thresholds, temps)
    for row, threshold in zip(idx, thresholds, strict=True):
        assert torch.equal(row, simulate(rule, signals, threshold, temps)[0])


def test_regression_curve_scores_pearson_of_the_outputs_taken():
    # patience 1 on regression outputs: example 0 leaves at exit 1, example 1 at exit 2 (the last)
    outputs = torch.tensor([[0.0, 0.05, 0.9], [1.0, 1.5, 2.0], [2.0, 2.02, 2.5], [0.5, 0.0, 0.3]])
    signals = ExitSignals(outputs.unsqueeze(-1))
    labels = np.array([0.1, 2.1, 2.2, 0.4])
    rule = exits.build_rule(PatienceExitConfig(regression_threshold=0.1))
    curve = threshold_curve(rule, signals, labels, [1, 2, 3], [1.0, 2.0], None)
    assert "accuracy" not in curve
    # patience 1: exits 1, 2, 1, 2 (temperatures never touch regression outputs); patience 2: all at exit 2
    taken = {1.0: np.array([0.05, 2.0, 2.02, 0.3]), 2.0: outputs[:, 2].numpy()}
    for row in curve.itertuples():
        assert row.score == pytest.approx(pearson(taken[row.threshold], labels))
    np.testing.assert_allclose(curve["mean_exit_layer"], [2.5, 3.0])
    assert threshold_curve(rule, signals, labels, [1, 2, 3], [1.0], torch.ones(3))["score"].item() == (
        pytest.approx(curve["score"].iloc[0])
    )


CURVE = pd.DataFrame(
    {
        "threshold": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "accuracy": [0.80, 0.84, 0.86, 0.86, 0.89, 0.90],
        "layer_speedup": [4.0, 2.5, 2.5, 2.5, 1.5, 1.0],
    }
)


def test_accuracy_within_picks_the_fastest_good_enough_row():
    # accuracy >= 0.84: rows 0.5..0.9; fastest is 2.5, where 0.6 and 0.7 are the most accurate (a plateau)
    row = choose_threshold(CURVE, "accuracy_within", reference_accuracy=0.90, tolerance=0.06)
    assert row["threshold"] == 0.7  # the slower edge of the plateau: safer for accuracy
    assert row["target_met"] is True
    row = choose_threshold(
        CURVE, "accuracy_within", reference_accuracy=0.90, tolerance=0.06, larger_is_slower=False
    )
    assert row["threshold"] == 0.6
    # tolerance is absolute and inclusive: 0.90 - 0.01 admits 0.89
    assert choose_threshold(CURVE, "accuracy_within", reference_accuracy=0.90)["threshold"] == 0.8


def test_speedup_picks_the_most_accurate_fast_enough_row():
    row = choose_threshold(CURVE, "speedup", reference_accuracy=0.90, speedup=2.0)
    assert row["threshold"] == 0.6  # 0.6 and 0.7 tie; the faster edge is safer for a speed target
    assert row["target_met"] is True
    assert choose_threshold(CURVE, "speedup", reference_accuracy=0.9, speedup=1.5)["threshold"] == 0.8


def test_impossible_targets_return_the_closest_row_marked():
    row = choose_threshold(CURVE, "speedup", reference_accuracy=0.90, speedup=5.0)
    assert row["threshold"] == 0.4 and row["target_met"] is False
    row = choose_threshold(CURVE, "accuracy_within", reference_accuracy=0.99, tolerance=0.01)
    assert row["threshold"] == 0.9 and row["target_met"] is False


def test_unknown_target_is_a_user_error():
    with pytest.raises(UserError, match="calibrate.target"):
        choose_threshold(CURVE, "fastest", reference_accuracy=0.9)


def test_score_column_chooses_on_another_metric():
    # a regression curve carries Pearson's r as `score` and no accuracy column
    curve = CURVE.rename(columns={"accuracy": "score"})
    row = choose_threshold(
        curve, "accuracy_within", reference_accuracy=0.90, tolerance=0.06, score_column="score"
    )
    assert row["threshold"] == 0.7 and row["target_met"] is True
    with pytest.raises(KeyError):
        choose_threshold(curve, "accuracy_within", reference_accuracy=0.90)  # the default reads `accuracy`


# ---------------------------------------------------------------- a super-model fraction (cascades)


def _super_fraction_curve() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "threshold": [0.1, 0.2, 0.25, 0.3, 0.4, 0.5],
            "accuracy": [0.80, 0.84, 0.83, 0.86, 0.90, 0.91],
            "layer_speedup": [3.0, 2.5, 2.6, 2.0, 1.5, 1.0],
            "super_fraction": [0.05, 0.15, 0.20, 0.25, 0.40, 1.00],
        }
    )


@pytest.mark.parametrize(
    "target,threshold",
    [(0.25, 0.3), (0.2, 0.2), (0.5, 0.4), (1.0, 0.5), (0.05, 0.1)],
)
def test_super_fraction_picks_the_most_accurate_row_within_the_target(
    target: float, threshold: float
) -> None:
    row = choose_threshold(
        _super_fraction_curve(), "super_fraction", reference_accuracy=0.91, super_fraction=target
    )
    assert row["threshold"] == threshold
    assert bool(row["target_met"])
    assert row["super_fraction"] <= target


def test_super_fraction_ties_go_to_the_faster_row() -> None:
    curve = _super_fraction_curve()
    curve.loc[2, "accuracy"] = 0.86  # now equal to the 0.25-fraction row, and faster
    row = choose_threshold(curve, "super_fraction", reference_accuracy=0.91, super_fraction=0.25)
    assert row["threshold"] == 0.25


def test_super_fraction_out_of_reach_gives_the_fastest_row_unmet() -> None:
    row = choose_threshold(
        _super_fraction_curve(), "super_fraction", reference_accuracy=0.91, super_fraction=0.01
    )
    assert row["threshold"] == 0.1
    assert not row["target_met"]


# ---------------------------------------------------------------- calibration.json

# calibration.json as `elastic calibrate` wrote it before the file had a version
WRITTEN_WITHOUT_VERSION = {
    "rule": "maxprob",
    "rule_settings": {"name": "maxprob"},
    "threshold": 0.9,
    "temperatures": [1.25, 0.75],
    "exit_layers": [1, 2],
    "exits": ["L1", "L2"],
    "target": "accuracy_within",
    "tolerance": 0.01,
    "speedup_target": 2.0,
    "target_met": True,
    "score_name": "accuracy",
    "reference_score": 0.9,
    "score": 0.89,
    "layer_speedup": 1.5,
    "flops_speedup": 1.4,
    "super_fraction": 0.3,
    "speed_column": "layer_speedup",
    "n_examples": 100,
    "weights": "sha256:00",
}


def _calibration_file(folder: Path, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint.CALIBRATION
    path.write_text(json.dumps(data))
    return path


def test_calibration_file_round_trips_with_the_same_keys(tmp_path: Path):
    calib = checkpoint.CalibrationFile(**WRITTEN_WITHOUT_VERSION)
    assert calib.version == checkpoint.CALIBRATION_VERSION == 1
    calib.save(tmp_path)
    written = json.loads((tmp_path / checkpoint.CALIBRATION).read_text())
    assert written == {"version": 1, **WRITTEN_WITHOUT_VERSION}
    assert list(written)[1:] == list(WRITTEN_WITHOUT_VERSION)  # the keys in the order they always had
    assert checkpoint.CalibrationFile.load(tmp_path) == calib
    assert checkpoint.read_calibration(tmp_path) == written


def test_calibration_written_before_versions_reads_as_version_1(tmp_path: Path):
    _calibration_file(tmp_path, WRITTEN_WITHOUT_VERSION)
    calib = checkpoint.CalibrationFile.load(tmp_path)
    assert calib is not None and calib.version == 1
    assert (calib.rule, calib.threshold, calib.temperatures, calib.exits) == (
        "maxprob",
        0.9,
        [1.25, 0.75],
        ["L1", "L2"],
    )
    assert calib.rule_settings == {"name": "maxprob"} and calib.weights == "sha256:00"
    assert calib.extra == {}


def test_older_calibrations_without_rule_settings_or_a_record_still_read(tmp_path: Path):
    evaluated = {key: WRITTEN_WITHOUT_VERSION[key] for key in ("rule", "threshold", "temperatures", "exits")}
    _calibration_file(tmp_path, {**evaluated, "accuracy": 0.89})  # a key this elastic does not know
    calib = checkpoint.CalibrationFile.load(tmp_path)
    assert calib is not None and calib.rule_settings is None and calib.threshold == 0.9
    assert calib.extra == {"accuracy": 0.89}
    assert calib.to_json()["accuracy"] == 0.89


def test_no_calibration_file_is_none(tmp_path: Path):
    assert checkpoint.CalibrationFile.load(tmp_path) is None
    assert checkpoint.read_calibration(tmp_path) is None


def test_a_newer_calibration_version_is_refused(tmp_path: Path):
    path = _calibration_file(tmp_path, {**WRITTEN_WITHOUT_VERSION, "version": 2})
    with pytest.raises(UserError) as caught:
        checkpoint.CalibrationFile.load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "version 2, this elastic reads version 1" in message and "re-run `elastic calibrate`" in message


@pytest.mark.parametrize(
    "data,problem",
    [
        ({**WRITTEN_WITHOUT_VERSION, "version": "1"}, 'version is "1", not a whole number from 1'),
        ({**WRITTEN_WITHOUT_VERSION, "version": 0}, "version is 0, not a whole number from 1"),
        ({**WRITTEN_WITHOUT_VERSION, "threshold": "high"}, 'threshold is "high", not float'),
        ({**WRITTEN_WITHOUT_VERSION, "temperatures": [1.0]}, "1 temperatures for 2 exits"),
        ({**WRITTEN_WITHOUT_VERSION, "temperatures": [1.0, 0.0]}, "are not all positive"),
        ({k: v for k, v in WRITTEN_WITHOUT_VERSION.items() if k != "rule"}, "no rule"),
        ("maxprob", "not a JSON object"),
    ],
)
def test_a_damaged_calibration_is_one_line(tmp_path: Path, data: object, problem: str):
    path = _calibration_file(tmp_path, data)
    with pytest.raises(UserError) as caught:
        checkpoint.CalibrationFile.load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and f"{path} is corrupt" in message and problem in message, message
    assert message.endswith("re-run `elastic calibrate`")


def test_a_truncated_calibration_is_one_line(tmp_path: Path):
    path = _calibration_file(tmp_path, WRITTEN_WITHOUT_VERSION)
    path.write_text(path.read_text()[:40])
    with pytest.raises(UserError) as caught:
        checkpoint.CalibrationFile.load(tmp_path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_evaluate_takes_threshold_and_temperatures_from_the_calibration_file(tmp_path: Path):
    from omegaconf import OmegaConf

    from elastic_cli.config import RootConfig
    from elastic_cli.stages.evaluate import _operating_point

    raw = OmegaConf.merge(
        OmegaConf.structured(RootConfig),
        {
            "stage": "evaluate",
            "method": {"name": "early_exit", "exit": {"name": "maxprob"}},
            "backbone": {"name": "tiny-bert", "family": "bert", "path": "none"},
            "task": {"name": "sst2", "dataset": "local"},
        },
    )
    cfg = OmegaConf.to_object(raw)
    assert isinstance(cfg, RootConfig) and cfg.method.exit.threshold is None
    _calibration_file(tmp_path, WRITTEN_WITHOUT_VERSION)
    calib = checkpoint.CalibrationFile.load(tmp_path)
    threshold, temperatures, source = _operating_point(cfg, calib, ["L1", "L2"])
    assert (threshold, source) == (0.9, "calibration")
    assert temperatures is not None and temperatures.tolist() == [1.25, 0.75]
    assert _operating_point(cfg, calib, ["L1", "L3"])[1] is None  # fitted on other exits
    cfg.method.exit.name = "entropy"
    with pytest.raises(UserError, match="made for the maxprob rule, not entropy"):
        _operating_point(cfg, calib, ["L1", "L2"])
