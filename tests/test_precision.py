"""device.quantize=int8 and device.dtype: what an inference stage runs the model in. Every Linear layer of
the backbone, the exit heads and the LTE module becomes a dynamically quantized one; its outputs stay close
to float32's; the int8 adaptive path at batch 1 equals the rule applied to the int8 model's batch-1
outputs; combinations that cannot run are refused before anything loads."""

from __future__ import annotations

import pytest
import torch
from test_multi_exit import MAXPROB, _batch, _model, _texts
from torch import nn

from elastic_cli import exits
from elastic_cli.config import DeviceConfig, DeviceName, Dtype, Quantize
from elastic_cli.errors import UserError
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.precision import check_precision, for_inference, precision_name


def _float_linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("head", [HeadSpec(), HeadSpec(kind="fastbert", width=16, attention_heads=2)])
def test_int8_quantizes_every_linear_and_stays_close_to_float32(head):
    model, tok = _model("bert", head=head, lte=True)
    ids, mask, types = _batch(tok, _texts(64, seed=3))
    with torch.inference_mode():
        before = model(ids, mask, types)
    assert _float_linears(model)  # the backbone's, the heads', the LTE module's
    same = for_inference(model, DeviceConfig(quantize=Quantize.int8))
    assert same is model and _float_linears(model) == []
    with torch.inference_mode():
        after = model(ids, mask, types)
    assert after.logits.shape == before.logits.shape and after.lte is not None
    # int8 weights move the logits a little, not the decisions of most examples
    agree = (after.logits.argmax(-1) == before.logits.argmax(-1)).float().mean()
    assert agree >= 0.9, float(agree)
    assert not torch.equal(after.logits, before.logits)  # it did change the arithmetic


def test_int8_adaptive_at_batch_1_equals_the_rule_on_its_batch_1_outputs():
    """Dynamic quantization scales activations per batch, so the int8 model's outputs depend on the batch
    they ran in: at batch 1 the adaptive path is still exactly the rule on the same model's outputs."""
    model, tok = _model("bert")
    for_inference(model, DeviceConfig(quantize=Quantize.int8))
    temps = torch.tensor([1.3, 0.8, 1.0, 1.1])
    exited = set()
    with torch.inference_mode():
        for text in _texts(20, seed=4):
            ids, mask, types = _batch(tok, [text])
            cached = model(ids, mask, types)
            for t in (0.5, 0.8, 0.95):
                index, logits = exits.simulate(MAXPROB, cached, t, temps)
                out = model.adaptive(ids, mask, types, MAXPROB, t, temps)
                assert int(out.exit_index[0]) == int(index[0])
                assert torch.equal(out.logits, logits)
                exited.add(int(index[0]))
    assert len(exited) > 1  # the thresholds made examples leave at different exits


def test_dtype_casts_the_model():
    model, tok = _model("bert")
    for_inference(model, DeviceConfig(dtype=Dtype.bfloat16))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, mask, types = _batch(tok, _texts(4, seed=5))
    with torch.inference_mode():
        assert model(ids, mask, types).logits.dtype == torch.bfloat16


def test_names_and_refusals():
    assert precision_name(DeviceConfig()) == "float32"
    assert precision_name(DeviceConfig(dtype=Dtype.float16)) == "float16"
    assert precision_name(DeviceConfig(quantize=Quantize.int8)) == "int8"
    check_precision(DeviceConfig(quantize=Quantize.int8))
    with pytest.raises(UserError, match="CPU only: use device=cpu"):
        check_precision(DeviceConfig(name=DeviceName.cuda, quantize=Quantize.int8))
    with pytest.raises(UserError, match="drop device.dtype=float16"):
        check_precision(DeviceConfig(dtype=Dtype.float16, quantize=Quantize.int8))
