"""Exit rules on hand-made outputs whose exits are known, ELBERT against its original binary algorithm,
E-LANG's energy router (its score, its swift/super decisions and its threshold grid), and the contract
every registered rule keeps (causal, a [T, 1, 1] threshold tensor, a grid inside its range)."""

from __future__ import annotations

import math

import pytest
import torch

from elastic_cli import calibration, exits
from elastic_cli.config import ExitRuleConfig
from elastic_cli.errors import UserError
from elastic_cli.exits import ElbertExitConfig, EnergyExitConfig, ExitSignals, PatienceExitConfig

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))

# the rules that decide on exit outputs (token_drop scales a length-reducing model instead)
OUTPUT_RULES = sorted(n for n, r in exits.RULES.items() if "multi_exit" in r.model_shapes)


def _signals(probs: list[list[list[float]]], lte: list[list[float]] | None = None) -> ExitSignals:
    """Logits whose softmax is `probs` [N, E, C] (log-probabilities are logits)."""
    return ExitSignals(torch.tensor(probs).log(), None if lte is None else torch.tensor(lte))


def _binary(p0: list[list[float]]) -> ExitSignals:
    """Two-class outputs from the probability of class 0 at every exit, [N, E]."""
    return _signals([[[p, 1.0 - p] for p in row] for row in p0])


def _exit_at(rule: exits.ExitRule, signals: ExitSignals, threshold: float) -> list[int]:
    return exits.simulate(rule, signals, threshold)[0].tolist()


def test_maxprob_exits_at_first_confident_exit():
    # example 0: confident at exit 1; example 1: at exit 2; example 2: never (falls to the last exit)
    signals = _signals(
        [
            [[0.6, 0.4], [0.95, 0.05], [0.99, 0.01]],
            [[0.5, 0.5], [0.7, 0.3], [0.2, 0.8]],
            [[0.5, 0.5], [0.55, 0.45], [0.6, 0.4]],
        ]
    )
    idx, chosen = exits.simulate(MAXPROB, signals, 0.9)
    assert idx.tolist() == [1, 2, 2]
    assert torch.equal(chosen, signals.logits[[0, 1, 2], [1, 2, 2]])
    assert _exit_at(MAXPROB, signals, 0.7) == [1, 1, 2]
    assert _exit_at(MAXPROB, signals, 0.5) == [0, 0, 0]


def test_temperatures_change_the_decision():
    signals = _signals([[[0.8, 0.2], [0.99, 0.01]]])
    assert exits.simulate(MAXPROB, signals, 0.75)[0].tolist() == [0]
    # a high temperature at exit 0 flattens it below the threshold
    assert exits.simulate(MAXPROB, signals, 0.75, torch.tensor([4.0, 1.0]))[0].tolist() == [1]


def test_first_exit_forces_the_last():
    fired = torch.tensor([[False, False, False], [False, True, True], [True, False, False]])
    assert exits.first_exit(fired).tolist() == [2, 1, 0]


# three classes, four exits; normalised entropies (H / log 3) in the comments, entropies in nats after them
THREE_CLASS = _signals(
    [
        # 1.000 (1.099), 0.817 (0.898), 0.582 (0.639), 0.102 (0.112)
        [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.98, 0.01, 0.01]],
        # 0.946 (1.040), 0.359 (0.394), 0.984 (1.081), 0.730 (0.802)
        [[0.5, 0.25, 0.25], [0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.7, 0.2, 0.1]],
        # 0.984 (1.081), 0.946 (1.040), 0.984 (1.081), 0.946 (1.040)
        [[0.4, 0.35, 0.25], [0.5, 0.25, 0.25], [0.4, 0.35, 0.25], [0.5, 0.25, 0.25]],
    ]
)


def test_entropy_in_nats_exits_below_the_threshold():
    rule = exits.build_rule(ExitRuleConfig(name="entropy"))
    assert _exit_at(rule, THREE_CLASS, 0.4) == [3, 1, 3]
    assert _exit_at(rule, THREE_CLASS, 0.7) == [2, 1, 3]
    assert _exit_at(rule, THREE_CLASS, 1.05) == [1, 0, 1]
    # strict <: a uniform binary exit has entropy log 2 exactly and does not leave at threshold log 2
    uniform = _binary([[0.5, 0.5]])
    assert rule.decide(uniform, math.log(2.0)).tolist() == [[False, False]]
    assert rule.decide(uniform, math.log(2.0) + 1e-6).tolist() == [[True, True]]


def test_normalised_entropy_exits_below_the_threshold():
    rule = exits.build_rule(ExitRuleConfig(name="norm_entropy"))
    assert _exit_at(rule, THREE_CLASS, 0.5) == [3, 1, 3]
    assert _exit_at(rule, THREE_CLASS, 0.6) == [2, 1, 3]
    assert _exit_at(rule, THREE_CLASS, 0.95) == [1, 0, 1]


# predicted class at each of five exits: agreements build the counter, a disagreement resets it
PATIENCE_PREDICTIONS = [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_patience_counts_agreements_and_resets():
    logits = torch.nn.functional.one_hot(torch.tensor(PATIENCE_PREDICTIONS), 3).float() * 2.0
    signals = ExitSignals(logits)
    rule = exits.build_rule(PatienceExitConfig())
    # counters: [0,1,2,3,4], [0,0,1,0,1], [0,1,0,1,2]
    assert rule.decide(signals, 1.0).tolist() == [
        [False, True, True, True, True],
        [False, False, True, False, True],
        [False, True, False, True, True],
    ]
    assert _exit_at(rule, signals, 1) == [1, 2, 1]
    assert _exit_at(rule, signals, 2) == [2, 4, 4]
    assert _exit_at(rule, signals, 3) == [3, 4, 4]
    assert _exit_at(rule, signals, 4) == [4, 4, 4]


def test_patience_on_regression_outputs():
    outputs = torch.tensor([[0.0, 0.05, 0.5, 0.52, 0.55], [1.0, 1.3, 1.35, 1.38, 2.0]]).unsqueeze(-1)
    signals = ExitSignals(outputs)
    # |change| < 0.1: counters [0,1,0,1,2] and [0,0,1,2,0]
    rule = exits.build_rule(PatienceExitConfig(regression_threshold=0.1))
    assert _exit_at(rule, signals, 1) == [1, 2]
    assert _exit_at(rule, signals, 2) == [4, 3]
    # |change| < 0.04: the first step (0.05) no longer agrees; counters [0,0,0,1,2] and [0,0,0,1,0]
    strict = exits.build_rule(PatienceExitConfig(regression_threshold=0.04))
    assert _exit_at(strict, signals, 1) == [3, 3]
    assert _exit_at(strict, signals, 2) == [4, 4]


def test_patience_built_from_a_plain_config_takes_the_schema_defaults():
    rule = exits.build_rule(ExitRuleConfig(name="patience"))
    assert isinstance(rule, exits.Patience)
    assert rule.regression_threshold == PatienceExitConfig().regression_threshold


def test_patience_grid_is_every_count_below_the_last_exit():
    rule = exits.build_rule(PatienceExitConfig())
    assert rule.grid(2, 6, 101).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rule.grid(2, 1, 101).tolist() == [1.0]  # one exit: a single point rather than an empty curve


# ELBERT, window 3, margin 0.1 (class probability above 0.6 counts), range 0.12; p(class 0) at five exits
ELBERT_P0 = [
    [0.65, 0.85, 0.75, 0.80, 0.80],  # class 0 throughout, not monotone until exits 2..4
    [0.30, 0.20, 0.15, 0.10, 0.50],  # class 1 at 0.7, 0.8, 0.85, 0.9 (rising), then undecided
    [0.70, 0.30, 0.70, 0.55, 0.90],  # flips class, then sits inside the margin band
]


@pytest.mark.parametrize(
    "mode,expected",
    [("bias_1", [2, 2, 4]), ("bias_2", [4, 2, 4]), ("bias_3", [3, 3, 4]), ("entropy", [4, 4, 4])],
)
def test_elbert_window_modes(mode, expected):
    rule = exits.build_rule(ElbertExitConfig(mode=mode, window=3, margin=0.1, range=0.12))
    signals = _binary(ELBERT_P0)
    assert _exit_at(rule, signals, 0.0) == expected  # threshold 0: stage 1 never fires
    # stage 1 first: p = 0.85 has H / log 2 = 0.61 < 0.65 (exit 1 of example 0, exit 2 of example 1)
    assert _exit_at(rule, signals, 0.65) == [min(1, expected[0]), 2, 4]


def test_elbert_window_decisions_at_every_exit():
    signals = _binary(ELBERT_P0)
    f, t = False, True
    expected = {
        "bias_1": [[f, f, t, t, t], [f, f, t, t, f], [f] * 5],
        # example 0's last window (0.75, 0.8, 0.8) ties: non-decreasing allows equal values
        "bias_2": [[f, f, f, f, t], [f, f, t, t, f], [f] * 5],
        "bias_3": [[f, f, f, t, t], [f, f, f, t, f], [f] * 5],
    }
    for mode, decided in expected.items():
        rule = exits.build_rule(ElbertExitConfig(mode=mode, window=3, margin=0.1, range=0.12))
        assert rule.decide(signals, 0.0).tolist() == decided, mode
    # bias_3's range is inclusive: a constant window has spread 0 and passes range 0
    flat = exits.build_rule(ElbertExitConfig(mode="bias_3", window=2, range=0.0))
    assert flat.decide(_binary([[0.8, 0.8, 0.9]]), 0.0).tolist() == [[f, t, f]]


def test_elbert_needs_a_full_window():
    signals = _binary(ELBERT_P0)
    decided = exits.build_rule(ElbertExitConfig(window=3, margin=0.1)).decide(signals, 0.0)
    assert not decided[:, :2].any()  # fewer than 3 exits seen
    assert _exit_at(exits.build_rule(ElbertExitConfig(window=2, margin=0.1)), signals, 0.0) == [1, 1, 4]
    assert not exits.build_rule(ElbertExitConfig(window=8)).decide(signals, 0.0).any()  # 5 exits < 8


def test_elbert_floor_is_one_over_c_plus_margin():
    # three classes, margin 0.1: class 0 needs p > 0.4333 at both exits of a 2-exit window
    signals = _signals([[[0.45, 0.35, 0.2], [0.5, 0.3, 0.2]], [[0.42, 0.38, 0.2], [0.6, 0.2, 0.2]]])
    rule = exits.build_rule(ElbertExitConfig(mode="bias_1", window=2, margin=0.1))
    assert rule.decide(signals, 0.0).tolist() == [[False, True], [False, False]]
    # bias_2 follows the class predicted at the window's first exit (class 1 here, which then falls), not
    # any class above 1/C: class 0 rises from 0.4 to 0.5, but it was not the prediction
    turning = _signals([[[0.4, 0.45, 0.15], [0.5, 0.3, 0.2]], [[0.45, 0.4, 0.15], [0.5, 0.3, 0.2]]])
    rising = exits.build_rule(ElbertExitConfig(mode="bias_2", window=2))
    assert rising.decide(turning, 0.0).tolist() == [[False, False], [False, True]]


def _original_elbert(
    mode: str, ent: float, x: list[float], thres: float, cnt: int, margin: float, rng: float
):
    """ELBERT's `ExitLayer.lower_than_thres` (shakeley/ELBERT, test_ver/modeling_albert.py), transcribed:
    x is the history of p(class 0) up to the current layer, ent its normalised entropy."""
    if ent < thres:
        return True
    if mode == "entropy" or len(x) < cnt:
        return False
    if mode == "bias_1":
        cnt_large = cnt_less = 0
        for i in range(cnt, 0, -1):
            if x[-i] < 0.5 - margin:
                cnt_less += 1
            elif x[-i] > 0.5 + margin:
                cnt_large += 1
        return cnt_large == cnt or cnt_less == cnt
    if mode == "bias_2":
        if x[-cnt] < 0.5 - margin:
            is_larger = False
        elif x[-cnt] > 0.5 + margin:
            is_larger = True
        else:
            return False
        logit = x[-cnt]
        for i in range(cnt - 1, 0, -1):
            if is_larger and x[-i] < logit:
                return False
            if not is_larger and x[-i] > logit:
                return False
            logit = x[-i]
        return True
    max_tmp, min_tmp = max(x[-cnt:]), min(x[-cnt:])
    if not (min_tmp > 0.5 + margin or max_tmp < 0.5 - margin):
        return False
    return max_tmp - min_tmp <= rng


@pytest.mark.parametrize("mode", ["bias_1", "bias_2", "bias_3", "entropy"])
def test_elbert_equals_the_original_binary_rule(mode):
    gen = torch.Generator().manual_seed(5)
    # random walks: predictions persist and confidence trends, so every window test fires somewhere
    logits = (0.8 * torch.randn(150, 9, 2, generator=gen, dtype=torch.float64)).cumsum(dim=1)
    p0 = logits.softmax(dim=-1)[..., 0].tolist()
    stage_2_fired = 0
    for window in (2, 4):
        for margin in (0.0, 0.15):
            for threshold in (0.0, 0.4):
                cfg = ElbertExitConfig(mode=mode, window=window, margin=margin, range=0.1)
                got = exits.build_rule(cfg).decide(ExitSignals(logits), threshold).tolist()
                for n, history in enumerate(p0):
                    for e in range(len(history)):
                        x = history[: e + 1]
                        p = x[-1]
                        ent = -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)
                        expected = _original_elbert(mode, ent, x, threshold, window, margin, 0.1)
                        assert got[n][e] == expected, (window, margin, threshold, n, e)
                        stage_2_fired += expected and ent >= threshold
    if mode == "entropy":
        assert stage_2_fired == 0
    else:
        assert stage_2_fired > 100  # the comparison covered the window tests, not only stage 1


def test_elbert_rejects_bad_settings():
    with pytest.raises(UserError, match="method.exit.mode"):
        exits.build_rule(ElbertExitConfig(mode="bias_9"))
    with pytest.raises(UserError, match="method.exit.window"):
        exits.build_rule(ElbertExitConfig(window=0))
    with pytest.raises(UserError, match="margin"):
        exits.build_rule(ElbertExitConfig(margin=-0.1))


def test_lte_exits_when_the_score_is_below_the_threshold():
    rule = exits.build_rule(ExitRuleConfig(name="lte"))
    lte = [[0.5, 0.004, 0.3, 0.001], [0.9, 0.8, 0.7, 0.6], [0.001, 0.9, 0.9, 0.9]]
    signals = ExitSignals(torch.zeros(3, 4, 1), torch.tensor(lte))  # regression outputs: LTE ignores them
    assert _exit_at(rule, signals, 0.005) == [1, 3, 0]
    assert _exit_at(rule, signals, 0.0005) == [3, 3, 3]
    assert _exit_at(rule, signals, 0.75) == [0, 2, 0]
    assert rule.decide(ExitSignals(torch.zeros(1, 2, 1), torch.tensor([[0.5, 0.25]])), 0.5).tolist() == [
        [False, True]  # strict <
    ]
    with pytest.raises(UserError, match="method.lte=true"):
        rule.decide(ExitSignals(torch.zeros(3, 4, 1)), 0.5)


def test_lte_grid_follows_scores_bunched_in_a_narrow_band():
    # a trained module's scores can sit in a narrow band (BERxiT on mpnet-base: 0.38-0.52); the grid must
    # walk through it in small steps rather than jump from "nearly nobody exits" to "all at the first exit"
    rule = exits.build_rule(ExitRuleConfig(name="lte"))
    gen = torch.Generator().manual_seed(0)
    lte = 0.40 + 0.05 * torch.rand(300, 4, generator=gen)
    signals = ExitSignals(torch.zeros(300, 4, 2), lte)
    grid = rule.grid(2, 4, 51, signals)
    assert grid.dtype == torch.float64 and torch.all(grid[1:] > grid[:-1]) and len(grid) <= 51
    assert float(grid[0]) == 0.0 and float(grid[-1]) <= 1.0
    assert float(grid[1]) <= 0.005  # still dense near BERxiT's default threshold
    exit_at = torch.stack([exits.first_exit(rule.decide(signals, float(t))) for t in grid]).double()
    at_first = (exit_at == 0).double().mean(dim=1)
    assert float(at_first[0]) == 0.0 and float(at_first[-1]) == 1.0  # the grid spans nobody .. everybody
    # small steps: here the fixed squared grid alone moves the mean exit by 1.56 (of 3) and 54% of the
    # examples to the first exit in one step; quantile points move it by at most ~6/24 and 1/24
    assert float(exit_at.mean(dim=1).diff().abs().max()) < 0.3
    assert float(at_first.diff().max()) < 0.08
    # without the scores (no data to place it on) the grid is the fixed one
    assert rule.grid(2, 4, 51).tolist() == (torch.linspace(0.0, 1.0, 51, dtype=torch.float64) ** 2).tolist()


@pytest.mark.parametrize("name", ["maxprob", "entropy", "norm_entropy", "elbert"])
def test_probability_rule_grids_follow_scores_bunched_near_chance(name: str) -> None:
    # briefly trained exits sit near chance (FastBERT on mpnet-base after one epoch of SST-2: normalised
    # entropy 0.97-1.0 at every exit): the fixed grid crosses that band in one step, so the curve had two
    # points; half the grid on the scores' quantiles walks through it
    rule = exits.build_rule(ExitRuleConfig(name=name))
    gen = torch.Generator().manual_seed(0)
    margin = 0.02 + 0.1 * torch.rand(400, 4, generator=gen)  # p = sigmoid(margin): 0.505-0.53
    signals = ExitSignals(torch.stack([torch.zeros_like(margin), margin], dim=-1))
    lo, hi, _ = rule.threshold_bounds(2)
    grid = rule.grid(2, 4, 51, signals)
    assert grid.dtype == torch.float64 and torch.all(grid[1:] > grid[:-1]) and len(grid) <= 51
    assert lo <= float(grid[0]) and float(grid[-1]) <= hi

    def mean_exits(thresholds: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [exits.first_exit(rule.decide(signals, float(t))).double().mean() for t in thresholds]
        )

    on_data, fixed = mean_exits(grid), mean_exits(rule.grid(2, 4, 51))
    # both span "all at the first exit" .. "none exits early"
    assert (
        {float(on_data.min()), float(on_data.max())} == {0.0, 3.0} == {float(fixed.min()), float(fixed.max())}
    )
    assert len(fixed.unique()) <= 4  # the fixed grid alone: a jump, the defect
    assert len(on_data.unique()) >= 20 and float(on_data.diff().abs().max()) < 0.3
    # without outputs to place it on, the grid is the rule's fixed scale, its endpoints the bounds
    assert (
        rule.grid(2, 4, 51).tolist()
        == torch.linspace(0.5 if name == "maxprob" else lo, hi, 51, dtype=torch.float64).tolist()
    )


# ---------------------------------------------------------------- energy (E-LANG's swift/super router)


def _energy(temperature: float = 1.0) -> exits.Energy:
    rule = exits.build_rule(EnergyExitConfig(temperature=temperature))
    assert isinstance(rule, exits.Energy)
    return rule


def test_energy_score_is_t_logsumexp_z_over_t() -> None:
    # logits whose logsumexp is known in closed form: log(1 + 2 + 3) = log 6
    z = torch.tensor([[math.log(1.0), math.log(2.0), math.log(3.0)], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_energy(1.0).score(z), torch.tensor([math.log(6.0), math.log(3.0)]).double())
    # T = 2: 2 log(sum exp(z / 2)) = 2 log(1 + sqrt 2 + sqrt 3), and 2 log 3 for equal logits
    expected_t2 = torch.tensor([2 * math.log(1 + math.sqrt(2) + math.sqrt(3)), 2 * math.log(3.0)]).double()
    torch.testing.assert_close(_energy(2.0).score(z), expected_t2)
    # a plain rule config (no YAML) takes E-LANG's default T = 1
    plain = exits.build_rule(ExitRuleConfig(name="energy"))
    torch.testing.assert_close(
        plain.decide(exits.ExitSignals(z[:, None]), 1.5)[:, 0], torch.tensor([True, False])
    )


def test_energy_routes_e_langs_examples() -> None:
    # E-LANG's README threshold 1.31 on 2-class logits: confident (+3, -3) stays with the swift model,
    # near-uniform (0.1, -0.1) goes on to the super model
    swift = torch.tensor([[3.0, -3.0], [0.1, -0.1]])
    rule = _energy(1.0)
    s = rule.score(swift)
    assert s[0].item() == pytest.approx(3.0 + math.log1p(math.exp(-6.0)), abs=1e-6)  # ~3.0025
    assert s[1].item() == pytest.approx(math.log(2 * math.cosh(0.1)), abs=1e-6)  # ~0.698
    assert s[0].item() == pytest.approx(3.0025, abs=1e-4)
    assert s[1].item() == pytest.approx(0.6981, abs=1e-4)
    # with T = 2 the confident score is 3 + 2 log(1 + e^-3)
    assert _energy(2.0).score(swift)[0].item() == pytest.approx(
        3.0 + 2 * math.log1p(math.exp(-3.0)), abs=1e-6
    )
    signals = exits.ExitSignals(torch.stack([swift, torch.zeros(2, 2)], dim=1))  # [N, 2 models, C]
    idx, chosen = exits.simulate(rule, signals, 1.31)
    assert idx.tolist() == [0, 1]  # swift keeps the first, super takes the second
    torch.testing.assert_close(chosen, torch.tensor([[3.0, -3.0], [0.0, 0.0]]))


def test_energy_decisions_and_swift_super_split() -> None:
    # scores 0.5, 1.0, ..., 3.0 by construction: equal logits c give s = c + log C (T = 1)
    c = 2
    targets = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    swift = (targets - math.log(c)).unsqueeze(1).expand(-1, c).clone()
    signals = exits.ExitSignals(torch.stack([swift, swift + 10.0], dim=1))
    rule = _energy(1.0)
    torch.testing.assert_close(rule.score(swift), targets)
    for t, n_super in [(0.0, 0), (0.75, 1), (1.75, 3), (2.9, 5), (3.5, 6)]:
        stay = exits.decisions(rule, signals, t)[:, 0]
        assert stay.tolist() == (targets >= t).tolist()  # go on iff s < t
        idx, _ = exits.simulate(rule, signals, t)
        assert int((idx == 1).sum()) == n_super, t
    # a score exactly at the threshold stays (s >= t)
    s0 = float(rule.score(swift)[2])
    assert bool(exits.decisions(rule, signals, s0)[2, 0])
    # with T = 2 equal logits c score 2 log(C e^{c/2}) = c + 2 log C: log C above the T = 1 score
    rule2 = _energy(2.0)
    torch.testing.assert_close(rule2.score(swift), targets + math.log(c))
    idx2, _ = exits.simulate(rule2, signals, 1.75)
    assert int((idx2 == 1).sum()) == 2  # only s + log 2 < 1.75, i.e. s in {0.5, 1.0}


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_energy_refuses_a_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(UserError, match="temperature"):
        exits.build_rule(EnergyExitConfig(temperature=temperature))


def _energy_grid_case(seed: int) -> tuple[exits.Energy, exits.ExitSignals, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 3, 4, generator=g) * 3.0  # float32, as cached logits are
    logits[:, -1] += 100.0  # the last model never decides: its scores must not set the grid
    signals = exits.ExitSignals(logits)
    rule = _energy(1.5)
    return rule, signals, rule.grid(4, 3, 25, signals)


def test_energy_grid_is_ascending_and_ends_with_all_go_on() -> None:
    rule, signals, grid = _energy_grid_case(0)
    assert grid.dtype == torch.float64
    assert torch.all(grid[1:] > grid[:-1])  # strictly ascending
    assert len(grid) <= 25
    assert float(grid[-1]) < 50.0  # placed on the first two models' scores only
    last, _ = exits.simulate(rule, signals, float(grid[-1]))
    assert last.tolist() == [2] * 40  # every example goes on to the last model
    # a larger threshold only sends more examples on, and the grid walks through them
    mean_exit = [float(exits.simulate(rule, signals, float(t))[0].double().mean()) for t in grid]
    assert all(a <= b for a, b in zip(mean_exit, mean_exit[1:], strict=False))
    assert len(set(mean_exit)) > 5
    assert mean_exit[1] < 0.1  # the low end keeps (nearly) everything at the first model


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_energy_grid_first_point_keeps_every_example_at_the_first_model(seed: int) -> None:
    # the lowest point is the lowest score as `decide` computes it (in the logits' dtype): computed in
    # float64 it sat an ulp above the float32 score of that example and sent it on (seed 0)
    rule, signals, grid = _energy_grid_case(seed)
    first, _ = exits.simulate(rule, signals, float(grid[0]))
    assert first.tolist() == [0] * 40
    # the calibration path (all thresholds at once, in the logits' dtype) must agree
    idx = calibration.exit_indices(rule, signals, [float(grid[0])], None)
    assert idx[0].tolist() == [0] * 40


def test_check_applicable():
    for name in ("maxprob", "entropy", "norm_entropy", "elbert"):
        with pytest.raises(UserError, match="regression: use method/exit= one of lte, patience"):
            exits.check_applicable(exits.build_rule(ExitRuleConfig(name=name)), num_labels=1, has_lte=False)
        exits.check_applicable(exits.build_rule(ExitRuleConfig(name=name)), num_labels=3, has_lte=False)
    exits.check_applicable(exits.build_rule(ExitRuleConfig(name="patience")), num_labels=1, has_lte=False)
    lte = exits.build_rule(ExitRuleConfig(name="lte"))
    with pytest.raises(UserError, match="method.lte=true"):
        exits.check_applicable(lte, num_labels=2, has_lte=False)
    exits.check_applicable(lte, num_labels=1, has_lte=True)


def test_build_rule_refuses_an_unknown_name():
    with pytest.raises(UserError, match="method.exit.name='maxprb' is not one of .*maxprob"):
        exits.build_rule(ExitRuleConfig(name="maxprb"))


def test_registry():
    assert set(exits.RULES) == {
        "maxprob",
        "entropy",
        "norm_entropy",
        "patience",
        "elbert",
        "lte",
        "energy",
        "token_drop",
    }
    assert {n for n, r in exits.RULES.items() if r.regression} == {"patience", "lte", "token_drop"}
    assert {n for n, r in exits.RULES.items() if r.needs_lte} == {"lte"}
    assert {n for n, r in exits.RULES.items() if r.current_exit_only} == {
        "maxprob",
        "entropy",
        "norm_entropy",
        "lte",
        "energy",
    }


def _contract_rules(name: str) -> list[exits.ExitRule]:
    if name == "elbert":  # a window that fits in the exits, so stage 2 is exercised too
        return [exits.build_rule(ElbertExitConfig(mode=m, window=2)) for m in exits.ELBERT_MODES]
    return [exits.build_rule(exits.RULES[name].schema(name=name))]


@pytest.mark.parametrize("name", OUTPUT_RULES)
def test_every_rule_is_causal_and_broadcasts_thresholds(name):
    gen = torch.Generator().manual_seed(0)
    num_exits = 5
    lte = torch.rand(40, num_exits, generator=gen)
    outputs = [3.0 * torch.randn(40, num_exits, 3, generator=gen)]
    if exits.RULES[name].regression:
        outputs.append(0.3 * torch.randn(40, num_exits, 1, generator=gen).cumsum(dim=1))
    for rule in _contract_rules(name):
        for logits in outputs:
            signals = ExitSignals(logits, lte)
            grid = rule.grid(logits.shape[-1], num_exits, 7)
            assert grid.dtype == torch.float64 and torch.all(grid[1:] > grid[:-1])
            lo, hi = rule.threshold_range
            assert lo <= float(grid.min()) and float(grid.max()) <= hi
            full = [rule.decide(signals, float(t)) for t in grid]
            assert all(d.shape == (40, num_exits) and d.dtype == torch.bool for d in full)
            # the grid spans behaviours: some example exits early at some threshold, and not at all of them
            stacked = torch.stack(full)[..., :-1]
            assert stacked.any() and not stacked.all()
            # a prefix of the exits gives the same decisions on that prefix (the adaptive path relies on it)
            for t, d in zip(grid, full):
                for k in range(1, num_exits):
                    assert torch.equal(rule.decide(signals.upto(k), float(t)), d[:, :k])
            # a [T, 1, 1] tensor of thresholds gives the [T, N, E] stack of single-threshold decisions
            many = rule.decide(signals, grid.to(logits.dtype).view(-1, 1, 1))
            assert torch.equal(many, torch.stack(full))


@pytest.mark.parametrize("name", OUTPUT_RULES)
def test_the_adaptive_window_decides_as_the_whole_prefix(name):
    """DecisionWindow keeps only the latest exits the rule reads; at every exit its decisions equal the
    last column of the rule's decisions on all exits so far (temperatures scaled per exit), including
    for rows that leave on the way."""
    gen = torch.Generator().manual_seed(1)
    num_exits, n = 9, 60
    lte = torch.rand(n, num_exits, generator=gen)
    logits = 2.0 * torch.randn(n, num_exits, 3, generator=gen)
    # runs of agreeing predictions, so patience and ELBERT's windows fire at some thresholds
    logits[: n // 2, 2:, 0] += 4.0
    temperatures = 0.5 + torch.rand(num_exits, generator=gen)
    rules = _contract_rules(name)
    if name == "elbert":
        rules += [exits.build_rule(ElbertExitConfig(mode="bias_1", window=4))]
    for rule in rules:
        grid = rule.grid(3, num_exits, 7, ExitSignals(logits, lte))
        sizes = set()
        for t in grid.tolist():
            full = exits.decisions(rule, ExitSignals(logits, lte), t, temperatures)
            window = exits.DecisionWindow(rule, t, temperatures)
            rows = torch.arange(n)
            for e in range(num_exits):
                got = window.decide(logits[rows, e], lte[rows, e])
                assert torch.equal(got, full[rows, e]), (rule.name, t, e)
                sizes.add(window.signals.num_exits)
                keep = (~got).nonzero().squeeze(1)
                if e % 3 == 2:  # compact as the adaptive path does
                    rows = rows[keep]
                    window.keep(keep)
        if rule.current_exit_only:
            assert rule.history(float(grid[0])) == 1
        # the window is bounded by what the rule reads, not the depth
        bound = max(rule.history(float(t)) or num_exits for t in grid.tolist())
        assert max(sizes) == min(bound, num_exits)
