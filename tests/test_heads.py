"""The exit-head kinds (elastic_cli/models/heads.py): what each builds, what belongs to one exit, what it
costs, how a single-exit checkpoint's head lands on the last exit, and which specs are refused."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from elastic_cli import checkpoint
from elastic_cli.cost import EncoderDims, HeadCost, classifier_flops, head_flops, pooler_flops
from elastic_cli.errors import UserError
from elastic_cli.models.heads import (
    HEADS,
    ExitHeads,
    FastBertHeads,
    HeadSpec,
    PoolerHeads,
    SharedHeads,
    SharedPoolerHeads,
    build_heads,
)

E, HIDDEN, LABELS = 3, 4, 3
FASTBERT = HeadSpec(kind="fastbert", width=8, attention_heads=2)
SPECS = {
    "pooler": HeadSpec(kind="pooler"),
    "shared_pooler": HeadSpec(kind="shared_pooler"),
    "shared": HeadSpec(kind="shared"),
    "fastbert": FASTBERT,
}


def _heads(spec: HeadSpec, num_exits: int = E, seed: int = 0) -> ExitHeads:
    torch.manual_seed(seed)
    return build_heads(spec, num_exits, HIDDEN, LABELS).eval()


def _inputs(batch: int = 5, tokens: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, 4:] = 0  # a padded example
    return torch.randn(batch, tokens, HIDDEN, generator=g), mask


def test_the_registry_holds_the_four_kinds():
    assert HEADS.names() == ["fastbert", "pooler", "shared", "shared_pooler"]
    assert "pooler" in HEADS and "nope" not in HEADS
    assert HEADS.get("pooler") is PoolerHeads
    assert HEADS.get("shared_pooler") is SharedPoolerHeads
    assert HEADS.get("shared") is SharedHeads
    assert HEADS.get("fastbert") is FastBertHeads
    for name, cls in HEADS.items():
        assert cls.name == name and issubclass(cls, ExitHeads)


@pytest.mark.parametrize(
    "kind,modules",
    [
        ("pooler", {"poolers": E, "classifiers": E}),
        ("shared_pooler", {"poolers": 1, "classifiers": E}),
        ("shared", {"poolers": 1, "classifiers": 1}),
        ("fastbert", {"fastbert": E}),
    ],
)
def test_modules_per_kind(kind: str, modules: dict[str, int]):
    heads = _heads(SPECS[kind])
    assert isinstance(heads, HEADS.get(kind)) and heads.spec == SPECS[kind]
    # the checkpoint keys (under `heads.`) are these module lists' and nothing else's
    assert {key.split(".")[0] for key in heads.state_dict()} == set(modules)
    for module, count in modules.items():
        assert len(getattr(heads, module)) == count
    per_pooler, per_classifier = HIDDEN * HIDDEN + HIDDEN, HIDDEN * LABELS + LABELS
    n_params = sum(p.numel() for p in heads.parameters())
    if kind == "fastbert":
        w = FASTBERT.width
        student = (HIDDEN * w + w) + (4 * w * w + 4 * w) + (w * w + w) + (w * LABELS + LABELS)
        assert n_params == E * student
    else:
        assert n_params == modules["poolers"] * per_pooler + modules["classifiers"] * per_classifier


def test_forward_shapes_and_pooled_size():
    hidden, mask = _inputs()
    for kind, spec in SPECS.items():
        heads = _heads(spec)
        assert heads.pooled_size == (FASTBERT.width if kind == "fastbert" else HIDDEN)
        assert heads.pooled_size == type(heads).pooled_width(spec, HIDDEN)
        for e in range(E):
            logits, pooled = heads(e, hidden, mask)
            assert logits.shape == (5, LABELS) and pooled.shape == (5, heads.pooled_size)


def test_mean_pooling_reads_only_the_unpadded_tokens():
    hidden, mask = _inputs()
    heads = _heads(HeadSpec(kind="shared", pooling="mean"))
    changed = hidden.clone()
    changed[0, 4:] += 100.0  # the padded tokens of example 0
    torch.testing.assert_close(heads(0, hidden, mask), heads(0, changed, mask))


def test_own_parameters():
    own = {kind: [len(_heads(spec).own_parameters(e)) for e in range(E)] for kind, spec in SPECS.items()}
    assert own["pooler"] == [4] * E  # its pooler's and its classifier's weight and bias
    assert own["shared_pooler"] == [2] * E  # its classifier's; the pooler belongs to no exit
    assert own["shared"] == [0] * E  # everything is shared
    assert own["fastbert"] == [len(list(_heads(FASTBERT).fastbert[0].parameters()))] * E
    heads = _heads(SPECS["pooler"])
    assert {id(p) for p in heads.own_parameters(1)} == {
        id(p) for p in [*heads.poolers[1].parameters(), *heads.classifiers[1].parameters()]
    }
    shared_pooler = _heads(SPECS["shared_pooler"])
    assert not {id(p) for p in shared_pooler.poolers.parameters()} & {
        id(p) for e in range(E) for p in shared_pooler.own_parameters(e)
    }
    fastbert = _heads(FASTBERT)
    assert {id(p) for p in fastbert.own_parameters(2)} == {id(p) for p in fastbert.fastbert[2].parameters()}


def test_flops_per_kind_by_hand():
    # hidden h = 4, C = 3 labels, n = 5 tokens (cost.py's docstring)
    n = np.float64(5)
    assert pooler_flops(HIDDEN) == 40  # 2 h^2 + 2 h
    assert classifier_flops(HIDDEN, LABELS) == 27  # (2 h + 1) C
    for kind in ("pooler", "shared_pooler", "shared"):  # every pooler kind: pooler + classifier
        assert HEADS.get(kind).cost(SPECS[kind], HIDDEN, LABELS) == HeadCost(67, 0, HIDDEN)
    # FastBERT at w = 8, a = 2: per token 2 h w + 2 w + 4 w^2 + 4 w + 7 a = 64 + 16 + 256 + 32 + 14 = 382;
    # fixed 4 w^2 + 2 w^2 + 2 w + (2 w + 1) C = 256 + 128 + 16 + 51 = 451
    assert FastBertHeads.cost(FASTBERT, HIDDEN, LABELS) == HeadCost(451, 382, 8)
    # through cost.head_flops, and with BERxiT's LTE module: + 2 p + 1 for pooled size p
    dims = EncoderDims(num_layers=2, hidden=HIDDEN, intermediate=8, heads=2, num_labels=LABELS)
    assert dims.head is None  # the default head: the pooler kind's cost
    assert head_flops(dims, n) == 67
    fastbert, shared = (HEADS.get(s.kind).cost(s, HIDDEN, LABELS) for s in (FASTBERT, SPECS["shared"]))
    assert head_flops(replace(dims, lte=True), 5) == 67 + 9
    assert head_flops(replace(dims, head=shared, lte=True), 5) == 67 + 9
    np.testing.assert_array_equal(head_flops(replace(dims, head=fastbert), np.array([0, 5])), [451, 2361])
    assert head_flops(replace(dims, head=fastbert, lte=True), 5) == 2361 + 17


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_static_checkpoints_head_lands_on_the_last_exit(kind: str):
    spec = SPECS[kind]
    static = _heads(spec, num_exits=1, seed=1)
    multi = _heads(spec, seed=2)
    before = {k: v.clone() for k, v in multi.state_dict().items()}
    mapped = {multi.static_key(k): v for k, v in static.state_dict().items()}
    moved = {k: multi.static_key(k) for k in static.state_dict()}
    # the classifier goes to the last exit (to the one shared classifier for `shared`)
    last = 0 if kind == "shared" else E - 1
    classifier = "fastbert.0.classifier.weight" if kind == "fastbert" else "classifiers.0.weight"
    assert moved[classifier] == classifier.replace(".0.", f".{last}.")
    if kind != "fastbert":  # a shared pooler stays shared; a per-exit one goes to the last exit
        assert moved["poolers.0.dense.weight"] == f"poolers.{E - 1 if kind == 'pooler' else 0}.dense.weight"
    missing, unexpected = multi.load_state_dict(mapped, strict=False)
    assert not unexpected
    hidden, mask = _inputs()
    torch.testing.assert_close(multi(E - 1, hidden, mask), static(0, hidden, mask))
    # the other exits' own modules keep their initialisation
    for key in missing:
        assert torch.equal(multi.state_dict()[key], before[key])


def test_init_from_compares_the_fields_each_kind_reads():
    for kind in ("pooler", "shared_pooler", "shared"):
        assert HEADS.get(kind).init_fields == ("kind", "pooling")
    assert FastBertHeads.init_fields == ("kind", "pooling", "width", "attention_heads")


def test_an_unknown_kind_is_a_user_error_naming_the_setting_and_the_kinds():
    for call in (lambda: HEADS.get("nope"), lambda: build_heads(HeadSpec(kind="nope"), E, HIDDEN, LABELS)):
        with pytest.raises(UserError) as caught:
            call()
        message = str(caught.value)
        assert "method.head" in message and "'nope'" in message
        assert all(name in message for name in ("pooler", "shared_pooler", "shared", "fastbert"))


def _meta(head: dict) -> dict:
    meta = checkpoint.CheckpointMeta(
        method="fastbert",
        backbone="tiny-bert",
        family="bert",
        task="sst2",
        seed=0,
        exit_layers=[1, 2],
        num_labels=2,
        label_names=["a", "b"],
        pooling="cls",
        max_seq_length=16,
        head=head,
    )
    return asdict(meta)


def test_spec_validation():
    assert FastBertHeads.spec_problem(FASTBERT) is None
    for width, heads in ((10, 3), (0, 2), (8, 0)):
        problem = FastBertHeads.spec_problem(replace(FASTBERT, width=width, attention_heads=heads))
        assert problem == f"a fastbert head of width {width} cannot have {heads} attention heads"
    for kind in ("pooler", "shared_pooler", "shared"):  # they do not read width and attention_heads
        assert HEADS.get(kind).spec_problem(HeadSpec(kind=kind, width=10, attention_heads=3)) is None
    # meta.json's head is checked by its kind
    assert checkpoint._meta_problem(_meta({"kind": "fastbert", "width": 8, "attention_heads": 2})) is None
    assert checkpoint._meta_problem(_meta({"kind": "fastbert", "width": 10, "attention_heads": 3})) == (
        "a fastbert head of width 10 cannot have 3 attention heads"
    )
    assert checkpoint._meta_problem(_meta({"kind": "pooler", "width": 10, "attention_heads": 3})) is None
    assert checkpoint._meta_problem(_meta({"kind": "nope"})) == (
        "head kind 'nope' with 'cls' pooling is not a head elastic builds"
    )
