"""The precision an inference stage runs a loaded model in: `device.dtype` (float16, bfloat16) and
`device.quantize=int8` (PyTorch's dynamic quantization: every nn.Linear's weights stored as int8, its
activations quantized on the fly per batch; CPU only). Training always runs float32."""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
from torch import nn

from elastic_cli.config import DeviceConfig, Dtype, Quantize
from elastic_cli.errors import UserError

M = TypeVar("M", bound=nn.Module)
DTYPES = {Dtype.float32: torch.float32, Dtype.float16: torch.float16, Dtype.bfloat16: torch.bfloat16}


def precision_name(cfg: DeviceConfig | None) -> str:
    """'float32', 'float16', 'bfloat16' or 'int8': how the model runs (names caches and metrics); None is a
    model as saved, float32."""
    if cfg is None:
        return "float32"
    return "int8" if cfg.quantize == Quantize.int8 else str(cfg.dtype)


def check_precision(cfg: DeviceConfig) -> None:
    """Refuse a combination that cannot run, before anything is loaded."""
    if cfg.quantize == Quantize.int8:
        if cfg.name != "cpu":
            raise UserError(
                f"device.quantize=int8 is PyTorch's dynamic quantization, which runs on the CPU only: "
                f"use device=cpu, or device.quantize=none on {cfg.name}"
            )
        if cfg.dtype != Dtype.float32:
            raise UserError(
                f"device.quantize=int8 quantizes a float32 model: drop device.dtype={cfg.dtype} (or set it "
                "to float32)"
            )


def for_inference(model: M, cfg: DeviceConfig) -> M:
    """`model` (float32, in eval mode), converted in place to the precision `cfg` asks for."""
    check_precision(cfg)
    if cfg.quantize == Quantize.int8:
        # torch.ao's eager quantization is deprecated in favour of torchao, which has no CPU dynamic int8
        # path for plain nn.Linear yet; the warnings say so on every call, once is enough (README)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    elif cfg.dtype != Dtype.float32:
        model.to(DTYPES[cfg.dtype])
    return model
