"""Resumable training: what a killed `elastic train` continues from.

`<checkpoint folder>.train-state.pt`, beside the checkpoint folder, holds everything the next step
depends on: the model, optimizer, LR schedule and objective (ELBERT's exit weights), the RNG states,
the position (stage, epoch, batches done in the epoch, steps), the best weights so far, and the MLflow
run id. `train` writes it atomically every `train.save_every` steps and at every epoch's end, and
removes it once the checkpoint is saved. A later `elastic train` of the same checkpoint and the same
training settings resumes from it (the same MLflow run goes on); with other settings it refuses,
and `train.resume=false` starts over. On CPU the resumed run ends with the same weights, bit for bit,
as one never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from elastic_cli import files, tracking
from elastic_cli.errors import UserError
from elastic_cli.stages.common import console

SUFFIX = ".train-state.pt"
# settings that do not change what training computes: a state resumes under other values of these
IGNORED = (
    "train.save_every",
    "train.resume",
    "train.log_every",
    "device.threads",
    "device.eval_batch_size",
    "device.throughput_batch_size",
    # one process or several: the same global batches, the same steps (dropout's draws aside)
    "device.distributed",
    "device.distributed_timeout",
)
SECTIONS = ("seed", "method", "backbone", "task", "train", "device")


def state_path(folder: Path) -> Path:
    return folder.with_name(folder.name + SUFFIX)


def training_settings(raw: DictConfig) -> dict[str, str]:
    """The flattened settings that decide what training computes (what a resume must match)."""
    plain = tracking.plain_config(raw)
    flat = tracking.flatten({k: plain[k] for k in SECTIONS if k in plain})
    return {k: v for k, v in flat.items() if k not in IGNORED}


@dataclass
class Position:
    stage: int = 0  # index into the method's stages
    epoch: int = 0  # epochs finished in this stage
    batch: int = 0  # batches done in epoch `epoch`
    done: int = 0  # optimizer steps in this stage
    step: int = 0  # optimizer steps in all stages (the MLflow step)


@dataclass
class TrainState:
    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    objective: dict[str, torch.Tensor]
    best: dict[str, Any]  # score, scores, state, step, stage (train.Best's fields)
    rng: dict[str, Any]
    settings: dict[str, str]
    run_id: str | None = None
    member: str = ""  # a cascade's model being trained ("" for a single model)
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": (version, torch.tensor(mt, dtype=torch.int64), gauss),
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: TrainState) -> None:
    """Atomically: a reader (a resume) sees the previous state or this one, never half of one."""
    files.clean_orphans(path)
    tmp = files.temp_file(path)
    try:
        payload = asdict(state)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> TrainState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["position"] = Position(**payload["position"])
        return TrainState(**payload)
    except Exception as err:  # a truncated or foreign file: unpickling fails in many ways
        raise UserError(
            f"the training state {path} is unreadable ({type(err).__name__}): delete it, or run with "
            "train.resume=false to start over (it is then replaced)"
        ) from None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def resumable(folder: Path, raw: DictConfig, resume: bool) -> TrainState | None:
    """The state to resume from, if one is there and `resume` is on; refuses one of other settings."""
    path = state_path(folder)
    if not path.is_file():
        return None
    if not resume:
        return None
    state = load(path)
    _check_settings(state.settings, training_settings(raw), path)
    return state


# --- cascades: one work folder, the models trained so far, the state of the one in training ---------

CASCADE_RECORD = "resume.json"


def cascade_work(folder: Path) -> Path:
    """Where a cascade is built before it is swapped in whole; kept when training is interrupted."""
    return folder.with_name(f".{folder.name}.cascade-work")


def _read_record(work: Path) -> dict[str, Any] | None:
    path = work / CASCADE_RECORD
    try:
        record = json.loads(path.read_text())
        assert isinstance(record, dict) and isinstance(record.get("settings"), dict)
        return record
    except (OSError, ValueError, AssertionError):
        return None


def resumable_cascade(work: Path, raw: DictConfig, resume: bool) -> str | None:
    """The MLflow run id to go on with when an interrupted cascade of these settings left `work`."""
    if not work.exists():
        return None
    record = _read_record(work)
    if record is None:
        raise UserError(
            f"{work} is in the way of this cascade's work folder and is not one elastic recognises "
            f"(no readable {CASCADE_RECORD}): move it away"
        )
    if not resume:
        return None
    _check_settings(record["settings"], training_settings(raw), work)
    return record.get("run_id")


def start_cascade_work(work: Path, raw: DictConfig, resume: bool, run_id: str | None) -> None:
    """Go on in `work` when it holds this run's interrupted cascade and `resume` is on (its settings were
    checked by resumable_cascade before the run opened), else start it afresh; an old one is removed,
    which is safe: resumable_cascade recognised it as elastic's own."""
    if work.exists() and resume:
        console.print(f"going on with the interrupted cascade in {work} (train.resume=false starts over)")
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    files.apply_umask(work)
    record = {"settings": training_settings(raw), "run_id": run_id}
    files.write_text_atomic(work / CASCADE_RECORD, json.dumps(record))


def finish_cascade_work(work: Path) -> None:
    """What is left of the resume bookkeeping before the folder becomes the cascade's checkpoint."""
    (work / CASCADE_RECORD).unlink(missing_ok=True)
    for state in (work / "members").glob(f"*{SUFFIX}"):
        state.unlink()


def _check_settings(theirs: dict[str, str], ours: dict[str, str], where: Path) -> None:
    if theirs == ours:
        return
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    shown = ", ".join(f"{k}={theirs.get(k)} there, {ours.get(k)} here" for k in keys[:4])
    raise UserError(
        f"an interrupted training run of other settings left its state in {where} ({shown}): run with "
        "those settings to resume it, or with train.resume=false to start over (the state is replaced)"
    )
