"""Each training objective checked by the property that defines it."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from elastic_cli.checks import to_root
from elastic_cli.config import BackboneConfig, TinyBackboneConfig, TrainStageConfig, parse_exit_layers
from elastic_cli.exits import ExitSignals
from elastic_cli.methods import METHODS, build_method
from elastic_cli.methods.objectives import (
    Alternating,
    DynamicWeights,
    LayerWeighted,
    SelfDistillation,
    lte_loss,
    per_exit_losses,
)
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.plugins import register_configs
from elastic_cli.stages.train_loop import build_optimizer, set_trainable

TEXTS = [f"w{i % 7} w{(i * 3) % 11} w{(i * 5) % 13} tok{i % 5}" for i in range(80)]


def _model(exit_layers=(1, 2, 3, 4), head: HeadSpec | None = None, **kwargs) -> tuple[MultiExitModel, dict]:
    torch.manual_seed(0)
    cfg = BackboneConfig(
        name="tiny-bert",
        family="bert",
        path="random",
        tiny=TinyBackboneConfig(
            num_layers=4, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=120
        ),
        use_pretrained_pooler=False,
    )
    backbone, tok = build_backbone(cfg, train_texts=TEXTS, seed=0)
    model = MultiExitModel(backbone, list(exit_layers), 3, head=head, use_pretrained_pooler=False, **kwargs)
    model.eval()  # no dropout: gradients are deterministic
    enc = tok(TEXTS[:8], padding=True, return_tensors="pt")
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc.get("token_type_ids"),
    }
    return model, batch


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _layer_grads(model: MultiExitModel) -> list[float]:
    """Total |grad| of each encoder layer's parameters."""
    out = []
    for layer in model.backbone.model.encoder.layer:
        out.append(sum(float(p.grad.abs().sum()) for p in layer.parameters() if p.grad is not None))
    return out


def _exit_loss_grads(model: MultiExitModel, batch: dict, exit_index: int) -> list[float]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    per_exit_losses(out.logits, LABELS)[exit_index].backward()
    return _layer_grads(model)


def test_sweet_exit_loss_updates_only_its_own_segment():
    # exits after layers 1, 3, 4: exit 1's segment is layers 2-3
    sweet, batch = _model(exit_layers=(1, 3, 4), stop_gradient=True)
    grads = _exit_loss_grads(sweet, batch, 1)
    assert grads[0] == 0.0 and grads[3] == 0.0  # before its segment, and after its exit
    assert grads[1] > 0.0 and grads[2] > 0.0
    emb = sum(
        float(p.grad.abs().sum()) for p in sweet.backbone.model.embeddings.parameters() if p.grad is not None
    )
    assert emb == 0.0  # only the first exit trains the embeddings
    # the first exit does reach the embeddings
    _exit_loss_grads(sweet, batch, 0)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in sweet.backbone.model.embeddings.parameters()
    )
    # without the stop-gradient (standard early exit) the same loss reaches layer 1: the test can fail
    plain, batch = _model(exit_layers=(1, 3, 4))
    assert _exit_loss_grads(plain, batch, 1)[0] > 0.0


def test_stop_gradient_does_not_change_the_forward_values():
    a, batch = _model(stop_gradient=True)
    b, _ = _model()
    with torch.no_grad():
        torch.testing.assert_close(a(**batch).logits, b(**batch).logits)


def test_gradient_equilibrium_averages_the_contributions_of_the_exits_that_read_a_layer():
    ge, batch = _model(gradient_equilibrium=True)
    plain, _ = _model()
    param = lambda m: m.backbone.model.encoder.layer[1].output.dense.weight  # noqa: E731  (feeds exit 1 and deeper)
    contributions = []
    for j in range(4):
        plain.zero_grad(set_to_none=True)
        out = plain(**batch)
        per_exit_losses(out.logits, LABELS)[j].backward()
        g = param(plain).grad
        contributions.append(torch.zeros_like(param(plain)) if g is None else g.clone())
    assert float(contributions[0].abs().sum()) == 0.0  # exit 0 does not read layer 2
    ge.zero_grad(set_to_none=True)
    per_exit_losses(ge(**batch).logits, LABELS).sum().backward()
    expected = (contributions[1] + contributions[2] + contributions[3]) / 3
    torch.testing.assert_close(param(ge).grad, expected, rtol=1e-4, atol=1e-7)
    # the plain sum would be three times as large: the check can tell them apart
    assert not torch.allclose(param(ge).grad, contributions[1] + contributions[2] + contributions[3])


def test_elbert_weights_sum_to_the_number_of_exits_and_move_off_bad_exits():
    obj = DynamicWeights([1, 2, 3, 4], w_init=4.0, w_lr=0.01)
    torch.testing.assert_close(obj.weights().sum(), torch.tensor(4.0))
    with torch.no_grad():
        obj.w.copy_(torch.tensor([-1.0, 0.5, 3.0]))
    torch.testing.assert_close(obj.weights().sum(), torch.tensor(4.0))
    assert obj.lr == 0.01
    # dL/dW_i = sigmoid'(W_i) (CE_i - CE_L): an exit worse than the final one has a positive gradient
    logits = torch.zeros(2, 4, 3)
    logits[:, 3, 0] = 5.0  # the final exit is confident and right (label 0); the others are uniform
    obj(ExitSignals(logits), torch.tensor([0, 0]), 0).backward()
    assert (obj.w.grad > 0).all()


def test_pabee_loss_is_the_layer_weighted_average():
    logits = torch.randn(5, 3, 2)
    labels = torch.tensor([0, 1, 1, 0, 1])
    per_exit = per_exit_losses(logits, labels)
    value = LayerWeighted([2, 4, 6])(ExitSignals(logits), labels, 0)
    torch.testing.assert_close(value, (2 * per_exit[0] + 4 * per_exit[1] + 6 * per_exit[2]) / 12)


def test_self_distillation_needs_no_labels_and_vanishes_when_students_match():
    logits = torch.randn(4, 3, 5)
    obj = SelfDistillation([1, 2, 3])
    a = obj(ExitSignals(logits), torch.tensor([0, 1, 2, 3]), 0)
    b = obj(ExitSignals(logits), torch.tensor([4, 4, 4, 4]), 0)
    torch.testing.assert_close(a, b)
    assert float(a) > 0
    same = logits[:, -1:].repeat(1, 3, 1)
    assert float(obj(ExitSignals(same), torch.zeros(4, dtype=torch.long), 0)) == pytest.approx(0.0, abs=1e-6)


def test_alternating_objective():
    logits = torch.randn(4, 3, 2)
    labels = torch.tensor([0, 1, 1, 0])
    per_exit = per_exit_losses(logits, labels)
    obj = Alternating([1, 2, 3])
    torch.testing.assert_close(obj(ExitSignals(logits), labels, 0), per_exit[-1])
    torch.testing.assert_close(obj(ExitSignals(logits), labels, 1), per_exit.sum())


def test_lte_targets():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # exit 0 says class 0, exit 1 class 1
    lte = torch.tensor([[0.0, 1.0]])
    # label 0: exit 0 right (target 0), exit 1 wrong (target 1): the module is exactly right
    assert float(lte_loss(ExitSignals(logits, lte), torch.tensor([0]))) == 0.0
    assert float(lte_loss(ExitSignals(logits, lte), torch.tensor([1]))) == pytest.approx(2.0)
    # regression: target tanh|z - y|
    reg = ExitSignals(torch.tensor([[[0.5], [2.0]]]), torch.tensor([[0.0, 0.0]]))
    expected = torch.tanh(torch.tensor(0.5)) ** 2 + torch.tanh(torch.tensor(1.0)) ** 2
    torch.testing.assert_close(lte_loss(reg, torch.tensor([1.0])), expected)


@pytest.mark.parametrize(
    "head,objective",
    [(HeadSpec(kind="pooler"), "sum_intermediate"), (HeadSpec(kind="fastbert", width=16), "self_distil")],
)
def test_second_stage_leaves_backbone_and_final_head_unchanged(head, objective):
    model, batch = _model(head=head)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_trainable(model, "intermediate_heads")
    from elastic_cli.config import RootConfig

    cfg = RootConfig()
    method = build_method(to_root_method("deebert" if objective == "sum_intermediate" else "fastbert"))
    obj = method.objective(
        TrainStageConfig(objective=objective, trainable="intermediate_heads"), model.exit_layers
    )
    opt = build_optimizer(model, obj, 1e-2, cfg.train)
    for _ in range(3):
        opt.zero_grad()
        method.loss(obj, model(**batch), LABELS, 0).backward()
        opt.step()
    after = model.state_dict()
    last = model.num_exits - 1
    final_head = {id(p) for p in model.heads.own_parameters(last)}
    for name, p in model.named_parameters():
        same = torch.equal(before[name], after[name])
        if name.startswith("backbone.") or id(p) in final_head:
            assert same, name
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], after[n])]
    assert changed and all(n.startswith("heads.") for n in changed)


def to_root_method(name: str):
    register_configs()
    GlobalHydra.instance().clear()
    from pathlib import Path

    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base="1.3"
    ):
        cfg = compose(config_name="train", overrides=[f"method={name}"])
    GlobalHydra.instance().clear()
    return to_root(cfg).method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_its_objectives(name):
    method = build_method(to_root_method(name))
    # (AdapLeR's stage 3 needs its saliency targets and a soft forward's trace: tests/test_adapler.py)
    for stage in [s for s in method.stages() if s.objective != "adapler"]:
        obj = method.objective(stage, [1, 2, 3, 4])
        loss = method.loss(obj, ExitSignals(torch.randn(2, 4, 3)), torch.tensor([0, 2]), 1)
        assert loss.ndim == 0 and torch.isfinite(loss)


def test_method_defaults_match_the_papers():
    assert to_root_method("sweet").stop_gradient and to_root_method("sweet").head == "shared_pooler"
    assert to_root_method("pabee").exit.name == "patience"
    deebert = to_root_method("deebert")
    assert [s.objective for s in deebert.stages] == ["final_only", "sum_intermediate"]
    fast = to_root_method("fastbert")
    assert fast.stages[1].lr_scale == 10.0 and fast.head == "fastbert" and fast.exit.name == "norm_entropy"
    assert to_root_method("elasticbert").gradient_equilibrium
    elbert = to_root_method("elbert")
    assert elbert.head == "shared" and elbert.objective == "dyn_weights" and elbert.exit.name == "elbert"
    berxit = to_root_method("berxit")
    assert berxit.lte and berxit.objective == "alternate" and berxit.exit.name == "lte"


def test_exit_layers_as_fractions_of_the_depth():
    sweet = [0.0833, 0.3333, 0.5, 1.0]
    assert parse_exit_layers(sweet, 12) == [1, 4, 6, 12]
    assert parse_exit_layers(sweet, 24) == [2, 8, 12, 24]
    assert parse_exit_layers(sweet, 6) == [1, 2, 3, 6]
