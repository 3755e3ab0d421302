"""Exit rules, written once and vectorised over the exits' outputs, [examples, exits, ...].

A rule maps what the exits produced so far (`ExitSignals`: logits, and the learned-to-exit score
when the model has one) to "exit here" decisions, [N, E] booleans. Every rule is causal: the decision
at exit e depends only on exits 0..e. The adaptive model calls the same `decide` on the prefix it
has computed, so the adaptive path and the simulation from cached logits cannot disagree about the
rule. Every rule also accepts a tensor of thresholds shaped [T, 1, 1] and returns [T, N, E] (a whole
threshold curve in one call): write rules with negative dims (dim=-1 is exits once the class dim is
reduced) so the extra leading dim broadcasts.

Each rule is a class registered in RULES with its config schema (`@RULES.register(name, schema=...)`): the
dataclass of its extra settings, beside it here, which conf/method/exit/<name>.yaml names in its defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch

from elastic_cli.config import FRACTION, POSITIVE, Bound, ExitRuleConfig, at_least
from elastic_cli.errors import UserError
from elastic_cli.progress import console
from elastic_cli.registry import Registry, as_schema
from elastic_cli.signals import ExitSignals

C = TypeVar("C", bound="ExitRuleConfig")

__all__ = [
    "RULES",
    "DecisionWindow",
    "ExitRule",
    "ExitSignals",
    "build_rule",
    "decisions",
    "first_exit",
    "simulate",
]


@dataclass
class PatienceExitConfig(ExitRuleConfig):
    """PABEE / ElasticBERT patience: exit once `threshold` consecutive exits agree."""

    name: str = "patience"
    # regression: consecutive outputs "agree" when they differ by less than this (PABEE: 0.1 for STS-B)
    regression_threshold: float = 0.1

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("regression_threshold", POSITIVE, "the change below which regression exits agree"),
    )


@dataclass
class ElbertExitConfig(ExitRuleConfig):
    """ELBERT: normalised entropy below `threshold`, else a confidence-window rule over `window` exits."""

    name: str = "elbert"
    mode: str = "bias_1"  # bias_1 | bias_2 | bias_3 | entropy (stage 1 only)
    window: int = 8  # ELBERT's cnt_thres
    margin: float = 0.0
    range: float = 0.1  # bias_3: the window's max - min of the predicted class's probability

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("window", at_least(1), "the exits in ELBERT's window"),
        ("margin", FRACTION, "ELBERT's margin above 1/C"),
        ("range", POSITIVE, "ELBERT's bias_3 spread"),
    )


@dataclass
class EnergyExitConfig(ExitRuleConfig):
    """E-LANG's energy router: leave at a model when s = T logsumexp(z / T) >= threshold, else go on."""

    name: str = "energy"
    temperature: float = 1.0  # T (E-LANG's README default)
    sweep: str = "0,1,2,3,4,5,6"

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("temperature", POSITIVE, "the energy rule's temperature T"),
    )


class ExitRule(Generic[C]):
    """Base of the registered rules: a rule instance holds its config (extra parameters such as a
    patience rule's regression threshold), typed as its own schema; the swept threshold is passed to
    `decide`."""

    name: ClassVar[str] = ""  # set by RULES.register
    schema: ClassVar[type[ExitRuleConfig]] = ExitRuleConfig  # its config dataclass, set by RULES.register
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    larger_is_slower: ClassVar[bool] = True  # a larger threshold makes examples exit later
    regression: ClassVar[bool] = False  # applies to one-output (regression) exits
    needs_lte: ClassVar[bool] = False  # reads the learned-to-exit score (method.lte=true)
    # calibrate fits per-exit temperatures for this rule by default (SWEET and Sledgehammer do, for
    # max-prob); the entropy rules of DeeBERT, FastBERT, ElasticBERT and ELBERT read raw logits, so
    # their thresholds stay on the papers' scale (calibrate.temperature=true turns scaling on anyway)
    temperature_scaling: ClassVar[bool] = False
    # what the threshold counts, when it counts something (patience: agreeing exits): 1, 2, ... only
    whole_thresholds: ClassVar[str] = ""
    # its decision at an exit reads that exit's outputs alone (`history` is 1)
    current_exit_only: ClassVar[bool] = False
    # the model shapes it decides for (Method.model_shape): the exits of one model, or a cascade's models
    model_shapes: ClassVar[tuple[str, ...]] = ("multi_exit", "cascade")

    def __init__(self, cfg: ExitRuleConfig) -> None:
        # a plain ExitRuleConfig (a rule named in code or on the command line without its YAML) gets the
        # schema's defaults for the rule's extra settings
        self.cfg: C = cast(C, as_schema(cfg, self.schema))

    def threshold_bounds(self, num_classes: int) -> tuple[float, float, str]:
        """The thresholds that mean something with `num_classes` classes, and why the upper bound is what
        it is when it depends on the task ("" when it does not)."""
        lo, hi = self.threshold_range
        return lo, hi, ""

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor | None:
        """What `decide` compares with the threshold, [N, E] (None: no such score, or a count)."""
        return None

    def fixed_grid(self, num_classes: int, size: int) -> torch.Tensor:
        """The rule's own scale: `size` thresholds spread over its bounds (float64, ascending)."""
        lo, hi, _ = self.threshold_bounds(num_classes)
        return torch.linspace(lo, hi, size, dtype=torch.float64)

    def decision_scores(self, signals: ExitSignals | None) -> torch.Tensor | None:
        """The threshold score where decisions are made (every exit but the last), or None when there is
        none to place a grid on (no signals, one exit, no examples, no such score)."""
        if signals is None or signals.num_exits < 2 or signals.logits.shape[0] == 0:
            return None
        return self.threshold_score(signals.upto(signals.num_exits - 1))

    def grid(
        self, num_classes: int, num_exits: int, size: int, signals: ExitSignals | None = None
    ) -> torch.Tensor:
        """Thresholds for calibration and the evaluation curve (float64, ascending, unique): the fixed grid,
        or, given `signals` (the scaled outputs the rule will decide on), half of it and half on the
        quantiles of the threshold score at the decision exits, within the fixed grid's span. A briefly
        trained exit's scores can bunch in a narrow band (FastBERT's normalised entropy at 0.97-1.0 after
        one epoch on SST-2) that a fixed grid crosses in one step, from "no example exits" to "all at the
        first exit": the points on the data give the curve its shape there."""
        scores = self.decision_scores(signals)
        if scores is None:
            return self.fixed_grid(num_classes, size)
        half = self.fixed_grid(num_classes, max(size // 2, 2))
        on_data = _quantiles_and_above(scores, size - len(half)).clamp(float(half[0]), float(half[-1]))
        return torch.unique(torch.cat([half, on_data]))

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def history(self, threshold: float) -> int | None:
        """How many of the latest exits the decision at an exit reads (None: all of them so far). The
        adaptive path keeps only those (`DecisionWindow`), so its per-exit cost does not grow with depth."""
        return 1 if self.current_exit_only else None

    def inert_settings(self, num_exits: int) -> list[str]:
        """This rule's settings (its config, the threshold when one is set) that can never act on a model
        with `num_exits` exits, a line each saying why; none by default. `check_applicable` warns of them."""
        return []


RULES: Registry[ExitRule[Any]] = Registry("exit rule", "method.exit.name", group="exit")
# (a rule without extra settings has none of its own: its YAML names config.py's schema/exit/base)
_NO_LTE = "the {name} exit rule reads the learned-to-exit module: set method.lte=true and train"


def _threshold(threshold: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    return threshold.to(like.dtype).to(like.device) if isinstance(threshold, torch.Tensor) else threshold


def _quantiles_and_above(scores: torch.Tensor, size: int) -> torch.Tensor:
    """A grid for a rule without a fixed scale, from the scores where decisions are made (every exit
    but the last): their quantiles and one point just above them all, at most `size` points (float64,
    ascending, unique)."""
    s = scores.double().flatten()
    q = torch.quantile(s, torch.linspace(0.0, 1.0, max(size - 1, 1), dtype=torch.float64))
    top = s.max() + 1e-6 * (1.0 + s.max().abs())
    return torch.unique(torch.cat([q, top.view(1)]))


@RULES.register("maxprob")
class MaxProb(ExitRule[ExitRuleConfig]):
    """SWEET / Sledgehammer: exit at the first exit whose top softmax probability reaches tau."""

    temperature_scaling = True
    current_exit_only = True

    def fixed_grid(self, num_classes: int, size: int) -> torch.Tensor:
        # SWEET sweeps linspace(1/C, 1): 1/C exits everything at the first exit, 1 runs (nearly) all layers
        return torch.linspace(1.0 / num_classes, 1.0, size, dtype=torch.float64)

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor:
        return signals.logits.softmax(dim=-1).amax(dim=-1)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        confidence = self.threshold_score(signals)
        return confidence >= _threshold(threshold, confidence)


def _never_below(threshold: float | None, score: str, outcome: str = "no example exits early") -> list[str]:
    """A rule that exits when `score` (never negative) is strictly below the threshold never does at 0."""
    if threshold is None or threshold > 0:
        return []
    return [f"method.exit.threshold={threshold:g}: {score} is never below {threshold:g}, so {outcome}"]


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) in nats over the last dim (DeeBERT's log sum e^z - sum p z)."""
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def _normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H / log C, in [0, 1] (FastBERT's uncertainty, ELBERT's `entropy`)."""
    return _entropy(logits) / math.log(logits.shape[-1])


def _streak(agree: torch.Tensor) -> torch.Tensor:
    """Count of consecutive agreements ending at each exit, [N, E] from agree [N, E-1] (agree[:, j]: exit
    j+1 agrees with exit j); reset to 0 at a disagreement, 0 at the first exit. The count at exit e is
    e minus the last exit <= e where the streak was broken, found with a running max (no loop)."""
    n, e = agree.shape[0], agree.shape[1] + 1
    index = torch.arange(e, device=agree.device).expand(n, e)
    broken = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=agree.device), ~agree], dim=1)
    last_break = torch.where(broken, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - last_break


@RULES.register("entropy")
class Entropy(ExitRule[ExitRuleConfig]):
    """DeeBERT / ElasticBERT: exit when the entropy of the exit's softmax, in nats, is below S (strict <).

    Unnormalised, so its scale depends on C: the grid spans [0, log C]. A larger S exits earlier."""

    threshold_range = (0.0, 20.0)
    larger_is_slower = False
    current_exit_only = True

    def threshold_bounds(self, num_classes: int) -> tuple[float, float, str]:
        if num_classes < 2:
            return super().threshold_bounds(num_classes)
        return 0.0, math.log(num_classes), f"at most log C, C = task.num_labels = {num_classes}"

    def fixed_grid(self, num_classes: int, size: int) -> torch.Tensor:
        return torch.linspace(0.0, math.log(max(num_classes, 2)), size, dtype=torch.float64)

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor:
        return _entropy(signals.logits)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        entropy = self.threshold_score(signals)
        return entropy < _threshold(threshold, entropy)

    def inert_settings(self, num_exits: int) -> list[str]:
        return _never_below(self.cfg.threshold, "the entropy")


@RULES.register("norm_entropy")
class NormalisedEntropy(ExitRule[ExitRuleConfig]):
    """FastBERT's `speed`: exit when H / log C is below S in [0, 1] (strict <). A larger S exits earlier."""

    threshold_range = (0.0, 1.0)
    larger_is_slower = False
    current_exit_only = True

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor:
        return _normalised_entropy(signals.logits)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        uncertainty = self.threshold_score(signals)
        return uncertainty < _threshold(threshold, uncertainty)

    def inert_settings(self, num_exits: int) -> list[str]:
        return _never_below(self.cfg.threshold, "the normalised entropy")


@RULES.register("patience", schema=PatienceExitConfig)
class Patience(ExitRule[PatienceExitConfig]):
    """PABEE / ElasticBERT patience: a counter, 0 at the first exit, +1 when an exit's argmax equals the previous
    exit's, reset to 0 otherwise; exit at the first exit whose counter reaches t. With t the earliest exit is
    index t (PABEE's `patient_counter == patience`). Regression (one output): consecutive outputs agree when
    they differ by less than `regression_threshold`. Per example, where PABEE decides for the whole batch."""

    threshold_range = (1.0, 1000.0)
    regression = True
    whole_thresholds = "agreeing exits"

    def __init__(self, cfg: ExitRuleConfig) -> None:
        super().__init__(cfg)
        if self.cfg.regression_threshold < 0:
            raise UserError(f"method.exit.regression_threshold={self.cfg.regression_threshold} must be >= 0")
        self.regression_threshold = self.cfg.regression_threshold

    def grid(
        self, num_classes: int, num_exits: int, size: int, signals: ExitSignals | None = None
    ) -> torch.Tensor:
        # every patience that can fire before the last exit, and E - 1 (which only the last exit can reach)
        return torch.arange(1, max(num_exits, 2), dtype=torch.float64)

    def history(self, threshold: float) -> int | None:
        # the counter reaches t (a whole count: ceil(t)) when the last ceil(t) + 1 predictions agree
        return max(math.ceil(threshold), 0) + 1

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        z = signals.logits
        if z.shape[-1] == 1:
            agree = (z[:, 1:, 0] - z[:, :-1, 0]).abs() < self.regression_threshold
        else:
            prediction = z.argmax(dim=-1)
            agree = prediction[:, 1:] == prediction[:, :-1]
        counter = _streak(agree).to(z.dtype)  # float, so a threshold compares the same as a float or a tensor
        return counter >= _threshold(threshold, counter)

    def inert_settings(self, num_exits: int) -> list[str]:
        t = self.cfg.threshold
        # the counter reaches t at exit t + 1 (1-indexed) at the earliest: the last, or past it
        if t is None or t < num_exits - 1:
            return []
        where = "the last" if t == num_exits - 1 else "past the last"
        return [
            f"method.exit.threshold={t:g}: a patience of {t:g} is reached at exit {t + 1:g} at the earliest, "
            f"{where} of this model's {num_exits} exits: no example exits early"
        ]


ELBERT_MODES = ("bias_1", "bias_2", "bias_3", "entropy")


@RULES.register("elbert", schema=ElbertExitConfig)
class Elbert(ExitRule[ElbertExitConfig]):
    """ELBERT (METHODS.md section 2): exit when the normalised entropy H / log C is below the threshold
    (stage 1); otherwise (stage 2) when the last N = `window` exits pass the `mode` test below. Stage 2 never
    fires before N exits have been seen; mode `entropy` is stage 1 alone.

    ELBERT's code is binary and batch 1: it tracks x = p(class 0) of the first example and tests
    "x > 0.5 + m or x < 0.5 - m". Here each example is decided on its own and any C works: take k, the
    predicted class at the window's reference exit, and x_j = p_j[k] over the window; the test becomes
    p[k] > 1/C + m.
      bias_1: the last N exits all predict the same class k, each with p[k] > 1/C + m.
      bias_2: k = the prediction at the window's first exit, where p[k] > 1/C + m; p[k] is non-decreasing
              over the following N - 1 exits.
      bias_3: as bias_1, and max - min of p[k] over the window <= `range`.
    For C = 2 and m >= 0 this is ELBERT's rule exactly: p0 > 0.5 + m means the prediction is class 0 with
    p[k] = p0 > 1/2 + m, and p0 < 0.5 - m means it is class 1 with p[k] = p1 = 1 - p0 > 1/2 + m. So "all N
    values on one side of the band" is "all N predict one class k with p[k] > 1/2 + m" (bias_1); x
    non-decreasing after a start above the band, or non-increasing after a start below it, is p[k]
    non-decreasing (bias_2); and the spread of p1 = 1 - p0 equals the spread of p0 (bias_3). A probability
    exactly on the band's edge (or at 1/2 with m = 0) passes neither test, in both. (Exactly up to float
    rounding: p1 is computed by the softmax, not as 1 - p0, so two values an ulp apart may compare
    differently.) Stage 1 is ELBERT's batch-mean entropy test applied to each example, as at batch 1.
    """

    threshold_range = (0.0, 1.0)
    larger_is_slower = False

    def __init__(self, cfg: ExitRuleConfig) -> None:
        super().__init__(cfg)
        settings = self.cfg
        if settings.mode not in ELBERT_MODES:
            raise UserError(f"method.exit.mode={settings.mode!r} is not one of {', '.join(ELBERT_MODES)}")
        if settings.window < 1:
            raise UserError(f"method.exit.window={settings.window} must be at least 1")
        if settings.margin < 0 or settings.range < 0:
            raise UserError("method.exit.margin and method.exit.range must be >= 0")
        self.mode = settings.mode
        self.window = int(settings.window)
        self.margin = float(settings.margin)
        self.range = float(settings.range)

    def history(self, threshold: float) -> int | None:
        # stage 1 reads the current exit; stage 2 the window of the last N
        return 1 if self.mode == "entropy" else self.window

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor:
        # the threshold acts on stage 1 (the normalised entropy) only
        return _normalised_entropy(signals.logits)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        uncertainty = self.threshold_score(signals)
        stage_1 = uncertainty < _threshold(threshold, uncertainty)
        return stage_1 | self.window_test(signals.logits.softmax(dim=-1))

    def window_test(self, probs: torch.Tensor) -> torch.Tensor:
        """Stage 2, [N, E] from probabilities [N, E, C]: True at exit e when the window of exits e-N+1..e passes."""
        n, e, c = probs.shape
        w = self.window
        fired = torch.zeros(n, e, dtype=torch.bool, device=probs.device)
        if self.mode == "entropy" or e < w:
            return fired
        prediction = probs.argmax(dim=-1)
        predictions = prediction.unfold(1, w, 1)  # [N, S, w]: the S = E - w + 1 windows, oldest exit first
        windows = probs.unfold(1, w, 1)  # [N, S, C, w]
        k = predictions[..., 0] if self.mode == "bias_2" else predictions[..., -1]  # [N, S]
        x = windows.gather(2, k[:, :, None, None].expand(-1, -1, 1, w)).squeeze(2)  # p_j[k], [N, S, w]
        floor = 1.0 / c + self.margin
        if self.mode == "bias_2":
            passed = (x[..., 0] > floor) & (x[..., 1:] >= x[..., :-1]).all(dim=-1)
        else:
            passed = (predictions == k.unsqueeze(-1)).all(dim=-1) & (x > floor).all(dim=-1)
            if self.mode == "bias_3":
                passed &= x.amax(dim=-1) - x.amin(dim=-1) <= self.range
        fired[:, w - 1 :] = passed
        return fired

    def inert_settings(self, num_exits: int) -> list[str]:
        inert = _never_below(
            self.cfg.threshold, "the normalised entropy", "ELBERT's entropy test never fires"
        )
        w = self.window
        if self.mode == "entropy" or w < num_exits:
            return inert
        # the window test fires at exit w at the earliest; every example stops at the last exit anyway
        where = "never completes" if w > num_exits else "completes only at the last exit"
        return inert + [
            f"method.exit.window={w}: the window {where} on this model's {num_exits} exits, so the rule is "
            f"ELBERT's entropy test alone (mode={self.mode} never acts)"
        ]


@RULES.register("lte")
class LearnedToExit(ExitRule[ExitRuleConfig]):
    """BERxiT's learning-to-exit: exit when the LTE module's predicted need to continue, u in [0, 1], is below
    the threshold (BERxiT's default 0.005). It reads no probabilities, so it serves regression too."""

    threshold_range = (0.0, 1.0)
    larger_is_slower = False
    regression = True
    needs_lte = True
    current_exit_only = True

    def fixed_grid(self, num_classes: int, size: int) -> torch.Tensor:
        # squared spacing: dense near 0, where BERxiT's default (0.005) sits (the half on the data follows a
        # trained module's scores, which bunch in a narrow band: 0.38-0.52 for BERxiT on mpnet-base, SST-2)
        return torch.linspace(0.0, 1.0, size, dtype=torch.float64) ** 2

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor | None:
        return signals.lte

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        if signals.lte is None:
            raise UserError(_NO_LTE.format(name=self.name))
        return signals.lte < _threshold(threshold, signals.lte)

    def inert_settings(self, num_exits: int) -> list[str]:
        return _never_below(self.cfg.threshold, "the learned-to-exit score")


@RULES.register("energy", schema=EnergyExitConfig)
class Energy(ExitRule[EnergyExitConfig]):
    """E-LANG's router (METHODS.md section 1): the negative free energy s = T logsumexp(z / T) of a model's
    logits; the example stays with that model when s >= threshold and goes on to the next (the super model)
    when s < threshold. High s means confident, in-distribution logits. Its scale is the logits' (E-LANG's
    TinyBERT on SST-2: t = 1.31), so calibration places its grid on the quantiles of s."""

    threshold_range = (-1e6, 1e6)
    current_exit_only = True

    def __init__(self, cfg: ExitRuleConfig) -> None:
        super().__init__(cfg)
        settings = self.cfg
        if not settings.temperature > 0:
            raise UserError(f"method.exit.temperature={settings.temperature} must be > 0")
        self.temperature = float(settings.temperature)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return t * torch.logsumexp(logits / t, dim=-1)

    def threshold_score(self, signals: ExitSignals) -> torch.Tensor:
        return self.score(signals.logits)

    def grid(
        self, num_classes: int, num_exits: int, size: int, signals: ExitSignals | None = None
    ) -> torch.Tensor:
        # from "every example stays at the first model" to "every example goes on"; scores in the
        # logits' dtype, as `decide` computes them, so the lowest grid point is exactly the lowest score
        # (in float64 it could sit an ulp above it and send that example on)
        scores = self.decision_scores(signals)
        if scores is None:
            return torch.linspace(0.0, 10.0, size, dtype=torch.float64)
        return _quantiles_and_above(scores, size)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        s = self.threshold_score(signals)
        return s >= _threshold(threshold, s)


@RULES.register("token_drop")
class TokenDrop(ExitRule[ExitRuleConfig]):
    """AdapLeR's trade-off knob: not a rule over exit outputs but a multiplier on the learned eta of a
    length-reducing model (models/length_reducing.py). Before layer l a token leaves when its predicted
    importance is below threshold x eta_l / n_l: 1 is the model as trained, 0 keeps every token, larger
    drops more. Every point of its curve is a real forward pass (no cached outputs can stand for one)."""

    threshold_range = (0.0, 100.0)
    larger_is_slower = False
    regression = True
    model_shapes = ("length_reducing",)
    GRID: ClassVar[tuple[float, ...]] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)

    def grid(
        self, num_classes: int, num_exits: int, size: int, signals: ExitSignals | None = None
    ) -> torch.Tensor:
        # each point costs a pass over the split: a fixed grid around 1 (as trained), at most `size` points
        points = self.GRID if size >= len(self.GRID) else self.GRID[:: math.ceil(len(self.GRID) / size)]
        return torch.tensor(sorted({*points, 1.0}), dtype=torch.float64)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        raise UserError(
            "method.exit=token_drop scales a length-reducing model's eta (method=adapler); it decides no exit"
        )


def rule_settings(cfg: ExitRuleConfig) -> dict[str, Any]:
    """The settings that change a rule's decisions besides its threshold (e.g. ELBERT's window, the
    energy temperature): a threshold calibrated under one set means nothing under another."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("threshold", "sweep")}


def build_rule(cfg: ExitRuleConfig) -> ExitRule:
    return RULES.get(cfg.name)(cfg)


def check_applicable(rule: ExitRule, num_labels: int, has_lte: bool, num_exits: int | None = None) -> None:
    """Reject a rule that cannot work on this model (regression exits, no learned-to-exit module), and warn
    of its settings that never act on its `num_exits` exits (`ExitRule.inert_settings`; train passes none).
    A single-exit model (the static baseline) never applies its rule: anything goes."""
    if num_exits == 1:
        return
    if num_labels == 1 and not rule.regression:
        usable = ", ".join(
            sorted(n for n, r in RULES.items() if r.regression and "multi_exit" in r.model_shapes)
        )
        raise UserError(
            f"the {rule.name} exit rule needs class probabilities; this task is a regression: "
            f"use method/exit= one of {usable}"
        )
    if rule.needs_lte and not has_lte:
        raise UserError(_NO_LTE.format(name=rule.name))
    if num_exits is not None:
        for line in rule.inert_settings(num_exits):
            console.print(f"[yellow]warning:[/] {line}", highlight=False)


def decisions(
    rule: ExitRule,
    signals: ExitSignals,
    threshold: float | torch.Tensor,
    temperatures: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, E] exit decisions (or [T, N, E] for a [T, 1, 1] tensor of thresholds)."""
    return rule.decide(signals.float().scaled(temperatures), threshold)


class DecisionWindow:
    """The adaptive path's view of what the exits produced, for the active examples: the latest
    `rule.history(threshold)` exits only, so deciding at exit e costs the same at every depth. Decides
    as `decisions(...)[:, -1]` on the whole prefix would (the rule reads nothing older)."""

    def __init__(self, rule: ExitRule, threshold: float, temperatures: torch.Tensor | None = None) -> None:
        self.rule, self.threshold, self.temperatures = rule, threshold, temperatures
        self.size = rule.history(threshold)
        self.signals: ExitSignals | None = None
        self.first = 0  # the exit index of the window's first column

    def decide(self, logits: torch.Tensor, lte: torch.Tensor | None) -> torch.Tensor:
        """Add the next exit's outputs ([N, C], [N]); return its decisions [N] (True: exit here)."""
        if self.signals is None or self.size == 1:  # nothing older to keep: no concatenation
            self.first += 0 if self.signals is None else self.signals.num_exits
            seen = ExitSignals.first(logits, lte)
        else:
            seen = self.signals.append(logits, lte)
            if self.size is not None and seen.num_exits > self.size:
                self.first += seen.num_exits - self.size
                seen = seen.latest(self.size)
        self.signals = seen
        t = None if self.temperatures is None else self.temperatures[self.first :]
        return decisions(self.rule, seen, self.threshold, t)[:, -1]

    def keep(self, positions: torch.Tensor) -> None:
        """Only the examples at `positions` go on."""
        if self.signals is not None:
            self.signals = self.signals.rows(positions)


def first_exit(exit_here: torch.Tensor) -> torch.Tensor:
    """Index of the first exit that fires for each example; the last exit if none does."""
    forced = exit_here.clone()
    forced[..., -1] = True
    # argmax returns the first maximal index: the first True
    return forced.to(torch.int8).argmax(dim=-1)


def simulate(
    rule: ExitRule, signals: ExitSignals, threshold: float, temperatures: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a rule to cached all-exits outputs: (exit index [N], logits at that exit [N, C])."""
    idx = first_exit(decisions(rule, signals, threshold, temperatures))
    chosen = signals.logits[torch.arange(signals.logits.shape[0]), idx]
    return idx, chosen
