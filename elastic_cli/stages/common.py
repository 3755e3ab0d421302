"""What every stage needs: seeding, the device, and the all-exits logits of a split (cached on disk)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from elastic_cli import distributed, files, launchers
from elastic_cli.config import DeviceConfig, RootConfig
from elastic_cli.cost import EncoderDims
from elastic_cli.data import Encoded, batches
from elastic_cli.errors import UserError
from elastic_cli.metrics import pearson
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.progress import console, progress
from elastic_cli.signals import ExitSignals


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_device(cfg: DeviceConfig) -> torch.device:
    threads = cfg.threads or launchers.job_threads()  # a sweep's jobs share the machine's cores
    if threads:
        torch.set_num_threads(threads)
    if cfg.name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible: use device=cpu")
    if cfg.name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available: use device=cpu")
    if distributed.active():
        # each process of a node on its own GPU: the one of its local rank
        return (
            torch.device("cuda", distributed.local_rank()) if cfg.name == "cuda" else torch.device(cfg.name)
        )
    if distributed.wanted(cfg):  # the other stages would run N copies writing the same files
        raise UserError(
            "device.distributed and torchrun are for `elastic train`: run calibrate and evaluate as one process"
        )
    return torch.device(cfg.name)


@torch.inference_mode()
def all_exit_outputs(
    model: MultiExitModel,
    enc: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    label: str = "",
    sharded: bool = False,
) -> ExitSignals:
    """Outputs of every exit for every example of `enc`, in its order, float32 on the CPU. `sharded` (in a
    distributed training run, the same model on every process): each process computes every N-th row and
    all get the whole, so every process scores (and chooses its best epoch) alike, N times faster."""
    model.eval()
    n = len(enc.labels)
    # a process without a row could not tell whether the model counts tokens: then each computes all
    sharded = sharded and distributed.active() and n >= distributed.world_size()
    blank = torch.zeros if sharded else torch.empty  # (sharded: other processes' rows stay 0 for the sum)
    logits = blank(n, model.num_exits, model.num_labels)
    lte = blank(n, model.num_exits) if model.lte is not None else None
    layer_tokens: torch.Tensor | None = None  # a length-reducing model's tokens entering each layer
    # length-sorted batches pad less; `index` puts every row back in place
    order = np.argsort(enc.lengths, kind="stable")
    if sharded:
        order = order[distributed.rank() :: distributed.world_size()]
    with progress() as bar:
        task = bar.add_task(f"all exits {label}".strip(), total=len(order), info="")
        for batch in batches(enc, batch_size, pad_id=pad_id, indices=order.tolist()):
            batch = batch.to(device)
            out = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            rows = batch.index.cpu()
            logits[rows] = out.logits.float().cpu()
            if lte is not None and out.lte is not None:
                lte[rows] = out.lte.float().cpu()
            if out.layer_tokens is not None:
                if layer_tokens is None:
                    layer_tokens = torch.zeros(n, out.layer_tokens.shape[1], dtype=torch.long)
                layer_tokens[rows] = out.layer_tokens.cpu()
            bar.advance(task, len(batch.index))
    if sharded:  # disjoint rows, zeros elsewhere: the sum over the processes is the whole
        logits = distributed.sum_over_ranks(logits, device)
        lte = None if lte is None else distributed.sum_over_ranks(lte, device)
        layer_tokens = None if layer_tokens is None else distributed.sum_over_ranks(layer_tokens, device)
    return ExitSignals(logits, lte, layer_tokens)


@dataclass
class CachedOutputs:
    signals: ExitSignals  # logits [N, E, C] (and LTE scores [N, E], tokens entering each layer [N, L])
    labels: np.ndarray
    lengths: np.ndarray  # tokens per example
    split: str = ""  # the split's name


def cached_outputs(
    ckpt: Path,
    fingerprint: str,
    split: str,
    model: MultiExitModel,
    enc: Encoded,
    cfg: RootConfig,
    pad_id: int,
    device: torch.device,
    variant: str = "",
) -> CachedOutputs:
    """All-exits outputs of a split, computed once per checkpoint weights (their content hash), split
    contents and `variant` (a length-reducing model's eta multiplier). The cache lives in the checkpoint's
    cache/ folder, or under outputs/cache/ when the checkpoint is read-only (a team's shared checkpoint);
    an unreadable cache file is recomputed."""
    key = hashlib.sha256()
    key.update(fingerprint.encode())
    key.update(variant.encode())
    key.update(np.asarray(enc.labels).tobytes())
    for ids in enc.input_ids:
        key.update(np.asarray(ids, dtype=np.int64).tobytes())
    name = f"{split}-{key.hexdigest()[:16]}.pt"
    shape = (len(enc.labels), model.num_exits, model.num_labels)
    places = [ckpt / "cache", Path(cfg.outputs) / "cache" / fingerprint.split(":")[-1][:16]]
    for path in (place / name for place in places):
        signals = _read_cache(path, shape)
        if signals is not None:
            break
    else:
        signals = all_exit_outputs(model, enc, cfg.device.eval_batch_size, pad_id, device, split)
        _write_cache([place / name for place in places], signals)
    return CachedOutputs(signals, np.asarray(enc.labels), np.asarray(enc.lengths), split)


def _read_cache(path: Path, shape: tuple[int, int, int]) -> ExitSignals | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        logits, lte, layer_tokens = saved["logits"], saved.get("lte"), saved.get("layer_tokens")
        if tuple(logits.shape) != shape or (lte is not None and tuple(lte.shape) != shape[:2]):
            raise ValueError(f"shape {tuple(logits.shape)}, expected {shape}")
        if layer_tokens is not None and layer_tokens.shape[0] != shape[0]:
            raise ValueError(f"layer_tokens for {layer_tokens.shape[0]} examples, expected {shape[0]}")
    except Exception as err:  # truncated, foreign or stale: recompute, never fail on a cache
        console.print(f"the logits cache {path} is unreadable ({type(err).__name__}): recomputing it")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return ExitSignals(logits, lte, layer_tokens)


def _write_cache(candidates: list[Path], signals: ExitSignals) -> None:
    """Into the first writable place (per-process temporary name, then an atomic rename); none: say so."""
    for path in candidates:
        if not files.writable_dir(path.parent):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = files.temp_file(path)
            try:
                saved = {"logits": signals.logits, "lte": signals.lte, "layer_tokens": signals.layer_tokens}
                torch.save(saved, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        except OSError as err:
            console.print(f"could not write the logits cache {path} ({err.strerror}): trying elsewhere")
    console.print("no writable place for the logits cache: the outputs are recomputed next time")


def cost_dims(model: MultiExitModel) -> EncoderDims:
    """The dimensions that price this model's layers and exit heads (elastic_cli/cost.py)."""
    dims = EncoderDims.of(model.backbone, model.num_labels)
    head = model.heads.cost(model.heads.spec, dims.hidden, dims.num_labels)
    return replace(dims, head=head, lte=model.lte is not None, predictor=model.predictor_width)


def exit_scores(out: ExitSignals, labels: np.ndarray) -> np.ndarray:
    """Accuracy (Pearson's r for regression) of every exit on its own, [E]."""
    labels = np.asarray(labels)
    if out.logits.shape[-1] == 1:
        preds = out.logits[..., 0].numpy()  # [N, E]
        # a constant exit has no correlation: score it 0, not NaN, so it can be compared
        return np.nan_to_num(np.array([pearson(preds[:, e], labels) for e in range(preds.shape[1])]), nan=0.0)
    preds = out.logits.argmax(dim=-1).numpy()  # [N, E]
    return (preds == labels[:, None]).mean(axis=0)
