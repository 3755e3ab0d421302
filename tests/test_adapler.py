"""AdapLeR: the length-reducing model, its drop rule, soft mask, saliency targets, losses, selection and
FLOPs (METHODS.md section 5). The CLI run is in tests/test_cli_adapler.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import padded_batch, random_texts, tiny_backbone

from elastic_cli import cost, saliency
from elastic_cli.data import Encoded
from elastic_cli.errors import UserError
from elastic_cli.methods.adapler import AdaplerObjective
from elastic_cli.models.length_reducing import (
    ETA_RANGE,
    LengthReducingModel,
    keep_decisions,
    log_importance,
    soft_edit,
)
from elastic_cli.stages.train_loop import Best

FAMILIES = ["bert", "mpnet", "albert", "distilbert"]
LENGTHS = [9, 5, 12, 7, 3]


def _model(
    family: str, layers: int = 3, eta: float = 0.9, seed: int = 0
) -> tuple[LengthReducingModel, object]:
    backbone, tokenizer = tiny_backbone(family, layers, random_texts(40, 0))
    torch.manual_seed(seed)
    model = LengthReducingModel(backbone, [layers], 3).eval()
    with torch.no_grad():
        model.eta.fill_(eta)  # high enough that the random predictors drop tokens
    return model, tokenizer


def _batch(tokenizer, lengths=LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = padded_batch(lengths, int(tokenizer.pad_token_id), vocab_size=80, seed=seed)
    ids[:, 0] = tokenizer.cls_token_id
    return ids, mask


# ---------------------------------------------------------------- the drop rule on hand-made scores


def test_keep_decisions_threshold_cls_and_alive():
    importance = torch.tensor([[0.01, 0.30, 0.10, 0.09, 0.50], [0.40, 0.05, 0.55, 0.0, 0.0]])
    alive = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
    delta = torch.tensor([0.10, 0.10])  # eta / n
    keep = keep_decisions(importance, delta, alive)
    # [CLS] kept however low; exactly delta is kept (only "below" drops); padding stays gone
    assert keep.tolist() == [[True, True, True, False, True], [True, False, True, False, False]]


def test_the_threshold_is_eta_over_the_tokens_alive_times_the_scale():
    model, tokenizer = _model("bert", layers=1, eta=0.5)
    ids, mask = _batch(tokenizer, [6])
    with torch.no_grad():
        state = model.backbone.embed(ids, mask, None)
        s = log_importance(model.predictors[0](state.hidden), torch.zeros(1, 6), model.theta).exp()
        for scale in (0.0, 0.5, 1.0, 3.0):
            expected = int(1 + (s[0, 1:] >= scale * 0.5 / 6).sum())
            _, tokens = model.reduce(ids, mask, None, scale)
            assert int(tokens[0, 0]) == expected
    assert int(model.reduce(ids, mask, None, 0.0)[1][0, 0]) == 6  # scale 0 keeps every token


def test_importance_is_a_distribution_over_alive_tokens_with_cls_weighted_by_theta():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    log_alive = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]])
    s = log_importance(scores, log_alive, torch.tensor(2.0)).exp()
    p = torch.tensor([1.0, np.e, 0.0, np.e**3])
    p[0] *= 2.0
    torch.testing.assert_close(s[0], p / p.sum())
    assert s[0, 2] == 0.0


def test_clip_keeps_eta_in_range_and_theta_positive():
    model, _ = _model("bert", layers=2)
    with torch.no_grad():
        model.eta.copy_(torch.tensor([-0.5, 7.0]))
        model.theta.fill_(-1.0)
    model.clip_speed_parameters()
    assert model.eta.tolist() == pytest.approx([ETA_RANGE[0], ETA_RANGE[1]])
    assert float(model.theta.detach()) == pytest.approx(0.01)


# ---------------------------------------------------------------- the soft mask


def test_soft_edit_limits():
    s = torch.tensor([[0.5, 0.02, 0.05, 0.2]])  # [CLS], below, at and above delta = 0.05
    delta = torch.tensor([0.05])
    hard = soft_edit(s, delta, 1e20, 0.1)
    assert hard[0, 0] == 0.0  # [CLS]
    assert hard[0, 1] == -1e4 and torch.exp(hard[0, 1]) == 0.0  # below: gone
    assert -1e-15 < hard[0, 2] <= 0.0 and -1e-15 < hard[0, 3] <= 0.0  # at and above: kept whole
    soft = soft_edit(s, delta, 10.0, 0.1)
    # a small lambda fades the token below delta only partly, and touches the others by at most beta/lambda
    assert -10.0 < soft[0, 1] < -1.0
    assert -0.01 - 1e-7 <= soft[0, 2] <= 0.0 and -0.01 - 1e-7 <= soft[0, 3] <= 0.0
    assert (soft <= 0).all() and (hard <= 0).all()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_soft_path_with_a_huge_lambda_is_the_hard_drop(family):
    model, tokenizer = _model(family)
    ids, mask = _batch(tokenizer)
    logits, tokens = model.reduce(ids, mask, None, 1.0, pack=False)
    model.sharpness = 1e20
    trace = model.soft_forward(ids, mask, None)
    torch.testing.assert_close(trace.logits[:, 0], logits, atol=1e-5, rtol=0)
    assert torch.equal(trace.soft_lengths.round().long(), tokens)


# ---------------------------------------------------------------- packed == masked, batched == batch 1


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_packed_path_equals_the_masked_path(family):
    model, tokenizer = _model(family)
    ids, mask = _batch(tokenizer)
    packed, packed_tokens = model.reduce(ids, mask, None, 1.0, pack=True)
    masked, masked_tokens = model.reduce(ids, mask, None, 1.0, pack=False)
    assert torch.equal(packed_tokens, masked_tokens)
    assert (packed_tokens[:, -1] < torch.tensor(LENGTHS)).any(), "the test must drop tokens"
    torch.testing.assert_close(packed, masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_batched_inference_equals_batch_one_example_by_example(family):
    model, tokenizer = _model(family)
    ids, mask = _batch(tokenizer, seed=3)
    rule = None
    batched = model.adaptive(ids, mask, None, rule, 1.0)  # type: ignore[arg-type]
    for i, n in enumerate(LENGTHS):
        single = model.adaptive(ids[i : i + 1, :n], mask[i : i + 1, :n], None, rule, 1.0)  # type: ignore[arg-type]
        assert torch.equal(single.layer_tokens, batched.layer_tokens[i : i + 1])
        assert single.logits.argmax(-1) == batched.logits[i].argmax(-1)
        torch.testing.assert_close(single.logits[0], batched.logits[i], atol=1e-5, rtol=0)


def test_a_family_without_an_additive_mask_is_refused():
    backbone, _ = tiny_backbone("deberta", 2, random_texts(40, 0))
    with pytest.raises(UserError, match="albert, bert, distilbert, mpnet families"):
        LengthReducingModel(backbone, [2], 2)


# ---------------------------------------------------------------- saliency


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_saliency_equals_gradient_times_input_at_the_embedding_output(family):
    model, tokenizer = _model(family, layers=2)
    model.reducing = False
    lengths = [7, 4, 9]
    ids, mask = _batch(tokenizer, lengths, seed=5)
    labels = [2, 0, 1]
    enc = Encoded(
        input_ids=[ids[i, :n].tolist() for i, n in enumerate(lengths)],
        token_type_ids=None,
        labels=np.array(labels),
    )
    got = saliency.saliency(model, enc, int(tokenizer.pad_token_id), batch_size=2, device=torch.device("cpu"))
    embeddings = model.backbone.model.embeddings
    for i, n in enumerate(lengths):
        captured = {}

        def keep(module, args, output, captured=captured):
            output.retain_grad()
            captured["h0"] = output
            return output

        handle = embeddings.register_forward_hook(keep)
        try:  # the model's own full forward, one example, no padding
            logits = model(ids[i : i + 1, :n], mask[i : i + 1, :n]).logits[0, -1]
            logits[labels[i]].backward()
        finally:
            handle.remove()
        h0 = captured["h0"]
        expected = (h0.grad * h0).norm(dim=-1)[0].detach()
        torch.testing.assert_close(got[i, :n], expected, atol=1e-6, rtol=1e-4)
        assert (got[i, n:] == 0).all()
        model.zero_grad()


def test_saliency_file_round_trip_and_key(tmp_path):
    path = tmp_path / "s.safetensors"
    targets = torch.rand(3, 5)
    saliency.save(path, targets, "abc")
    assert torch.equal(saliency.load(path, "abc"), targets)
    assert saliency.load(path, "other") is None  # other weights or data: recomputed
    assert torch.equal(saliency.load(path, None), targets)
    path.write_bytes(b"garbage")
    assert saliency.load(path, "abc") is None


# ---------------------------------------------------------------- losses and their optimisers


def _objective(targets: torch.Tensor, reference: float = 0.9) -> AdaplerObjective:
    return AdaplerObjective([3], targets, 0.005, 0.0005, 5e-4, 10.0, 1e5, reference, 0.01)


def test_lambda_rises_geometrically_over_the_epochs():
    objective = _objective(torch.zeros(1, 1))
    assert [objective.sharpness(e, 5) for e in range(5)] == pytest.approx([10, 100, 1e3, 1e4, 1e5])
    assert objective.sharpness(0, 1) == 10.0


def test_speed_loss_trains_eta_and_theta_only_and_main_loss_the_rest():
    model, tokenizer = _model("bert", eta=0.25)
    model.train()
    model.sharpness = 10.0
    ids, mask = _batch(tokenizer)
    labels = torch.tensor([0, 1, 2, 0, 1])
    rows = torch.arange(5)
    targets = torch.rand(5, ids.shape[1]) * mask
    objective = _objective(targets)
    objective.parameter_groups(model)
    torch.manual_seed(1)
    out = model(ids, mask)
    main = objective(out, labels, 0, rows=rows)
    speed = objective.speed_loss
    params = [p for n, p in model.named_parameters() if n not in ("eta", "theta")]
    expected_main = torch.autograd.grad(main, params, retain_graph=True, allow_unused=True)
    expected_speed = torch.autograd.grad(speed, [model.eta, model.theta], retain_graph=True)
    model.zero_grad()
    objective.backward(main)
    torch.testing.assert_close(model.eta.grad, expected_speed[0])
    torch.testing.assert_close(model.theta.grad, expected_speed[1])
    for p, g in zip(params, expected_main, strict=True):
        if g is not None:
            torch.testing.assert_close(p.grad, g)
    assert float(model.eta.grad.abs().sum()) > 0  # the length term reaches eta


def test_the_kl_term_is_zero_when_predictions_match_the_targets():
    objective = _objective(torch.tensor([[4.0, 1.0, 3.0, 0.0]]))
    target = torch.tensor([4.0, 1.0, 3.0])
    target = target / target.sum()
    log_s = torch.cat([target.log(), torch.tensor([float("-inf")])]).view(1, 1, 4)
    from elastic_cli.models.length_reducing import SoftTrace

    alive = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    trace = SoftTrace(torch.zeros(1, 1, 2), log_importance=log_s, alive=alive, theta=torch.tensor(1.0))
    assert objective.kl_per_layer(trace, torch.tensor([0])).abs().max() < 1e-6
    trace.log_importance = torch.log(torch.tensor([[[0.25, 0.25, 0.5, 0.0]]]))
    kl = float(objective.kl_per_layer(trace, torch.tensor([0]))[0])
    p = target
    q = torch.tensor([0.25, 0.25, 0.5])
    assert kl == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


# ---------------------------------------------------------------- model selection


def test_selection_keeps_the_fastest_epoch_within_a_point_of_stage_one():
    objective = _objective(torch.zeros(1, 1), reference=0.90)
    model, _ = _model("bert", layers=1)
    history = [(0.905, 1.2), (0.895, 1.8), (0.870, 2.9), (0.891, 1.6)]  # (calibration score, FLOPs speed-up)
    best = Best()
    for epoch, (score, speedup) in enumerate(history):
        with torch.no_grad():
            model.eta.fill_(0.1 * (epoch + 1))  # marks the epoch's weights
        rank = list(objective.rank(score, speedup))
        best = best.offer(rank, score, np.array([score]), model, step=epoch, stage=1, keep=1)
    # epoch 3 (2.9x) is 3 points down: out; of the others, epoch 2 (1.8x) is the fastest
    assert best.score == 0.895 and best.step == 1
    assert float(best.state["eta"][0]) == pytest.approx(0.2)


def test_selection_falls_back_to_the_best_score_when_no_epoch_is_within_a_point():
    objective = _objective(torch.zeros(1, 1), reference=0.95)
    assert objective.rank(0.90, 3.0) < objective.rank(0.92, 1.1) < objective.rank(0.945, 1.0)


def test_best_keeps_the_runners_up_best_first():
    model, _ = _model("bert", layers=1)
    best = Best()
    for step, score in enumerate([0.80, 0.85, 0.83, 0.70]):
        with torch.no_grad():
            model.eta.fill_(score)
        best = best.offer([score], score, np.array([score]), model, step=step, stage=0, keep=3)
    assert [float(s["eta"][0]) for s in best.states()] == pytest.approx([0.85, 0.83, 0.80])
    assert best.score == 0.85 and best.step == 1


# ---------------------------------------------------------------- FLOPs


def test_reduced_flops_on_hand_made_lengths():
    d = cost.EncoderDims(num_layers=2, hidden=4, intermediate=8, heads=2, num_labels=2, predictor=3)
    n = np.array([10, 6])
    tokens = np.array([[7, 3], [6, 6]])
    got = cost.reduced_flops(n, tokens, d)
    per_token_predictor = 2 * 4 * 3 + 3 + 5 * 3 + 2 * 3 + 1 + 5 + 1
    for i in range(2):
        expected = (
            cost.embedding_flops(np.array([n[i]]), d)[0]
            + cost.layer_flops(np.array([tokens[i, 0]]), d)[0]
            + cost.layer_flops(np.array([tokens[i, 1]]), d)[0]
            + cost.head_flops(d)
            + per_token_predictor * (n[i] + tokens[i, 0])  # before layer 1: all n; before layer 2: n_1
        )
        assert got[i] == pytest.approx(float(expected))
    # no dropping: the static model plus the predictors, which dropping must earn back
    full = cost.reduced_flops(n, np.stack([n, n], axis=1), d)
    np.testing.assert_allclose(full - cost.static_flops(n, d), per_token_predictor * 2 * n)


# ---------------------------------------------------------------- stage 2: computed once, then reused


def _context(tmp_path, model, tokenizer, previous):
    from elastic_cli.methods.base import StageContext

    lengths = [6, 4, 8]
    ids, _ = _batch(tokenizer, lengths, seed=2)
    enc = Encoded([ids[i, :n].tolist() for i, n in enumerate(lengths)], None, np.array([0, 1, 2]))
    return StageContext(
        train=enc,
        calibration=enc,
        pad_id=int(tokenizer.pad_token_id),
        device=torch.device("cpu"),
        batch_size=2,
        previous=previous,
        previous_score=0.9,
        work=tmp_path / "seed42",
    )


def test_saliency_targets_are_stored_beside_the_checkpoint_and_reused(tmp_path, monkeypatch):
    from elastic_cli.config import TrainStageConfig
    from elastic_cli.methods.adapler import Adapler, AdaplerConfig

    model, tokenizer = _model("bert", layers=2)
    states = [{k: v.clone() for k, v in model.state_dict().items()}]
    stage = TrainStageConfig(objective="adapler")
    first = Adapler(AdaplerConfig(name="adapler"))
    first.prepare_stage(1, stage, model, _context(tmp_path, model, tokenizer, states))
    work = tmp_path / "seed42.saliency.safetensors"
    assert work.is_file() and model.reducing and first.reference == 0.9
    assert first.checkpoint_files(tmp_path / "seed42") == {"saliency.safetensors": work}

    def never(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(saliency, "averaged_saliency", never)
    again = Adapler(AdaplerConfig(name="adapler"))
    again.prepare_stage(1, stage, model, _context(tmp_path, model, tokenizer, states))
    assert torch.equal(again.targets, first.targets)
    # other stage-1 weights: other targets
    other = [{k: v + 0.01 if v.is_floating_point() else v for k, v in states[0].items()}]
    with pytest.raises(AssertionError, match="recomputed"):
        again.prepare_stage(1, stage, model, _context(tmp_path, model, tokenizer, other))
    # stage 1 (plain fine-tuning) runs without dropping
    again.prepare_stage(
        0, TrainStageConfig(objective="final_only"), model, _context(tmp_path, model, tokenizer, [])
    )
    assert not model.reducing


def test_a_checkpoint_holding_its_saliency_targets_can_be_replaced(tmp_path):
    import json

    from elastic_cli import checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / checkpoint.META).write_text(
        json.dumps({"method": "adapler", "backbone": "tiny-bert", "task": "sst2"})
    )
    (folder / checkpoint.WEIGHTS).write_bytes(b"w")
    (folder / checkpoint.SALIENCY).write_bytes(b"s")
    assert "adapler checkpoint" in checkpoint.check_replaceable(folder, "adapler", "tiny-bert", "sst2")
