"""AdapLeR's saliency targets (METHODS.md section 5, stage 2): what its contribution predictors learn.

For every training example and token t, gradient x input at the embedding output h0 for the gold label y:
S_t = || dz_y/dh0_t * h0_t ||_2 (L2 over the hidden size), [CLS] and [SEP] included, no normalisation; z_y
is the final classifier's logit of y (a regression's output). AdapLeR averages S over the checkpoints of
its 3 best fine-tuning epochs. The targets are computed once and stored (safetensors) with a key of the
weights and the data they come from, so that training the predictors again does not recompute them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from elastic_cli import checkpoint, files
from elastic_cli.data import Batch, Encoded, batches
from elastic_cli.models.adapters import EncoderState
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.progress import progress

FILE = checkpoint.SALIENCY


def saliency(
    model: MultiExitModel, enc: Encoded, pad_id: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """S [N, T] (T the longest example; 0 past each example's length) for the final exit of `model`, with
    dropout off."""
    was_training = model.training
    model.eval()
    n = len(enc.labels)
    out = torch.zeros(n, max(enc.lengths, default=1))
    order = np.argsort(enc.lengths, kind="stable").tolist()  # length-sorted batches pad less
    last = model.num_exits - 1
    try:
        with progress() as bar:
            task = bar.add_task("saliency", total=n, info="")
            for batch in batches(enc, batch_size, pad_id=pad_id, indices=order):
                _saliency_batch(model, batch.to(device), last, out)
                bar.advance(task, len(batch))
    finally:
        model.train(was_training)
    return out


def _saliency_batch(model: MultiExitModel, batch: Batch, last: int, out: torch.Tensor) -> None:
    """One batch's S into its rows of `out`."""
    state = model.backbone.embed(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    h0 = state.hidden.detach().requires_grad_(True)
    state = EncoderState(h0, state.attention_mask, state.extras)
    for layer in range(model.backbone.num_layers):
        state = model.backbone.layer(layer, state)
    logits = model.heads(last, state.hidden, state.attention_mask)[0]
    gold = logits[:, 0] if logits.shape[-1] == 1 else logits.gather(1, batch.labels.view(-1, 1))[:, 0]
    (grad,) = torch.autograd.grad(gold.sum(), h0)  # examples are independent: the sum splits
    s = (grad * h0).norm(dim=-1) * batch.attention_mask.to(h0.dtype)
    out[batch.index.cpu(), : s.shape[1]] = s.detach().float().cpu()


def averaged_saliency(
    model: MultiExitModel,
    states: Sequence[dict[str, torch.Tensor]],
    enc: Encoded,
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """The mean of S over the weights `states` (AdapLeR's 3 best fine-tuning epochs), or over the model's
    own weights when there are none; the model is left holding states[0]."""
    if not states:
        return saliency(model, enc, pad_id, batch_size, device)
    total = torch.zeros(0)
    for state in states:
        model.load_state_dict(state)
        s = saliency(model, enc, pad_id, batch_size, device)
        total = s if total.numel() == 0 else total + s
    model.load_state_dict(states[0])
    return total / len(states)


def data_key(enc: Encoded, sources: Sequence[str]) -> str:
    """What the targets depend on: the weights (`sources`, one fingerprint each) and the encoded data."""
    key = hashlib.sha256()
    for source in sources:
        key.update(source.encode())
    key.update(np.asarray(enc.labels).tobytes())
    for ids in enc.input_ids:
        key.update(np.asarray(ids, dtype=np.int64).tobytes())
    return key.hexdigest()


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A content hash of weights held in memory."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: Path, targets: torch.Tensor, key: str) -> None:
    """Atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_file(path)
    try:
        save_file({"saliency": targets.contiguous()}, str(tmp), metadata={"key": key})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, key: str | None) -> torch.Tensor | None:
    """The targets stored at `path` if they were made with `key` (any key when None); None when the file
    is missing, unreadable or made from other weights or data."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
        if key is not None and stored != key:
            return None
        return load_file(str(path))["saliency"]
    except (SafetensorError, OSError, KeyError):
        return None
