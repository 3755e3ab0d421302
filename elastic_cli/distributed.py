"""Multi-process training (`torchrun --nproc_per_node N -m elastic_cli train ...`, or `srun` with one task
per GPU and `device.distributed=true`): the process group, rank queries, and the pieces the training loop
needs to train with DistributedDataParallel.

The design, in short:
- every rank builds the same model, reads the same data and walks the same seeded batch order; each global
  batch of `train.batch_size` rows is split across the ranks (data/encoding.py `batches(shard=...)`), so
  that N processes train as one process does with the same global batch;
- gradients are averaged with each rank's share of the global batch as its weight (a DDP communication
  hook for the model's, `Averager.average` for the objective's own parameters, e.g. ELBERT's exit weights);
- rank 0 alone opens the MLflow run and writes the training state and the checkpoint; the other ranks
  print nothing;
- a rank that fails records why in the process group's store before it exits; rank 0, stopped by the
  launcher's SIGTERM (torchrun ends the survivors of a failed rank) or by a collective's error, reads it and
  ends its run FAILED (a plain SIGTERM, with no peer failure recorded, still ends it KILLED).

Outside a distributed run every function here is the single-process identity (rank 0 of 1).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from elastic_cli.config import DeviceConfig
from elastic_cli.errors import UserError

T = TypeVar("T")

# torchrun's variables, and Slurm's (srun, one task per GPU) that stand for them
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"}
DEFAULT_PORT = 29500
# test hook: `RANK:STEPS` makes that rank raise an error once it has taken STEPS optimizer steps
FAULT_ENV = "ELASTIC_FAULT_ON_RANK"
_FAILED_KEY = "elastic/failed/"


@dataclass(frozen=True)
class Place:
    """Where this process is in the job."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # torchrun or srun


_place: Place | None = None  # set while a process group is up


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(name in env for name in TORCHRUN_VARS)


def place_from_env(environ: Mapping[str, str] | None = None) -> Place | None:
    """This process's place from torchrun's variables, else Slurm's (a task of srun); None outside both."""
    env = os.environ if environ is None else environ
    if launched_by_torchrun(env):
        names, launcher = {name: name for name in TORCHRUN_VARS}, "torchrun"
    elif all(name in env for name in SLURM_VARS.values()):
        names, launcher = SLURM_VARS, "srun"
    else:
        return None
    try:
        values = {key: int(env[name]) for key, name in names.items()}
    except ValueError:
        shown = " ".join(f"{name}={env[name]}" for name in names.values())
        raise UserError(f"the launcher's variables are not numbers ({shown})") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise UserError(f"{names['RANK']}={values['RANK']} is outside 0..{names['WORLD_SIZE']}-1")
    return Place(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], launcher)


def wanted(cfg: DeviceConfig, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this `elastic train` trains with the other processes of its job: always under torchrun (its
    variables say so), under srun only with device.distributed=true (every Slurm job sets SLURM_PROCID)."""
    return cfg.distributed or launched_by_torchrun(environ)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[03-05,07],cpu1` -> `gpu03`."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not match:
        raise UserError(f"cannot read the first host of the Slurm node list {nodelist!r}: set MASTER_ADDR")
    return match.group(1) + (match.group(2) or "")


def _rendezvous_env(place: Place) -> None:
    """env:// reads MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE: torchrun sets them; under srun they come from
    Slurm's (the first node of the step, a port from the job id) unless the job script set them."""
    if place.launcher != "srun":
        return
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if "MASTER_ADDR" not in os.environ:
        if not nodelist:
            raise UserError("srun gave no node list (SLURM_STEP_NODELIST): set MASTER_ADDR and MASTER_PORT")
        os.environ["MASTER_ADDR"] = first_host(nodelist)
    if "MASTER_PORT" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "0")
        os.environ["MASTER_PORT"] = str(DEFAULT_PORT + (int(job) % 10000 if job.isdigit() else 0))
    os.environ.update(
        RANK=str(place.rank), WORLD_SIZE=str(place.world_size), LOCAL_RANK=str(place.local_rank)
    )


def backend(cfg: DeviceConfig) -> str:
    if cfg.name == "cuda":
        return "nccl"
    if cfg.name == "cpu":
        return "gloo"
    raise UserError(
        f"distributed training runs on device=cpu (gloo) or device=cuda (nccl), not device={cfg.name}"
    )


@contextmanager
def session(cfg: DeviceConfig, batch_size: int) -> Iterator[Place | None]:
    """The process group of a distributed `elastic train` (nothing when not `wanted`), for the block.

    Checks first, in one line each: a launcher is there, the device fits, every rank gets rows. Collectives
    time out after device.distributed_timeout seconds, so a rank never waits for a dead peer for ever."""
    global _place
    if not wanted(cfg):
        yield None
        return
    place = place_from_env()
    if place is None:
        raise UserError(
            "device.distributed=true needs a launcher: run `torchrun --nproc_per_node N -m elastic_cli train "
            "...` or srun with one task per GPU (neither RANK/WORLD_SIZE/LOCAL_RANK nor "
            "SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID is set)"
        )
    try:
        name = backend(cfg)
        if place.world_size > batch_size:
            raise UserError(
                f"train.batch_size={batch_size} is smaller than the {place.world_size} processes: each global "
                "batch is split across them; raise train.batch_size or start fewer processes"
            )
    except UserError:
        if place.rank != 0:  # every rank finds the same: rank 0 says it, once, and the others stop quietly
            raise SystemExit(2) from None
        raise
    if name == "nccl":
        if torch.cuda.device_count() <= place.local_rank:
            raise UserError(
                f"local rank {place.local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): start "
                "one process per GPU"
            )
        torch.cuda.set_device(place.local_rank)
    _rendezvous_env(place)
    import torch.distributed as dist

    dist.init_process_group(name, init_method="env://", timeout=timedelta(seconds=cfg.distributed_timeout))
    _place = place
    if place.rank != 0:  # rank 0 speaks for the job: the others' lines would repeat its own
        from elastic_cli.progress import console

        console.quiet = True
    ok = False
    try:
        with failures():
            yield place
        ok = True
    finally:
        _place = None
        # after a failure a peer may be gone: tearing down could wait on it; the exit frees everything
        if ok:
            dist.destroy_process_group()


def active() -> bool:
    return _place is not None


def rank() -> int:
    return _place.rank if _place is not None else 0


def world_size() -> int:
    return _place.world_size if _place is not None else 1


def local_rank() -> int:
    return _place.local_rank if _place is not None else 0


def is_main() -> bool:
    """Rank 0, the one that logs and writes (True outside a distributed run)."""
    return rank() == 0


def shard() -> tuple[int, int] | None:
    """(rank, world size) for data/encoding.py's `batches`, None outside a distributed run."""
    return (_place.rank, _place.world_size) if _place is not None else None


# --- agreement between the ranks -----------------------------------------------------------------------


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 alone (a check or a claim only it makes: the checkpoint folder, the MLflow run)
    and give every rank its result, or its UserError, so that all go on or all stop with the same line.
    The other ranks get None when the result does not pickle."""
    if not active():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    result: T | None = None
    if is_main():
        try:
            result = fn()
            box[0] = ("ok", _picklable(result))
        except Exception as err:  # the others wait in the broadcast: tell them, then stop
            kind = "error" if isinstance(err, UserError) else "failed"
            box[0] = (kind, str(err) if kind == "error" else f"rank 0 stopped ({type(err).__name__}: {err})")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    if kind == "failed":
        raise PeerFailed(f"{value}: rank {rank()} stops too")
    return result if is_main() else value


def _picklable(value: Any) -> Any:
    import pickle

    try:
        pickle.dumps(value)
    except Exception:
        return None
    return value


def same_everywhere(value: Any, what: str) -> None:
    """Stop every rank when `value` (what a rank found, e.g. the training state it resumes from) differs
    between them; `what` names it in the error."""
    if not active():
        return
    import torch.distributed as dist

    seen: list[Any] = [None] * world_size()
    dist.all_gather_object(seen, value)
    if any(v != seen[0] for v in seen):
        shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
        raise UserError(
            f"the processes disagree on {what} ({shown}): the files must be on a file system every node sees"
        )


# --- gradients -------------------------------------------------------------------------------------------


@dataclass
class _HookState:
    factor: float = 1.0  # this rank's share of the global batch over the world size


# (no annotations on `bucket` and the return: DDP checks them against its own types, which this module's
# postponed annotations would turn into strings)
def _scaled_allreduce(state: _HookState, bucket):  # type: ignore[no-untyped-def]
    """DDP's all-reduce with this rank's weight in place of 1/world: sum_r (n_r / n) g_r, the gradient of
    the global batch's mean loss when g_r is that of rank r's mean loss over its n_r rows."""
    import torch.distributed as dist

    tensor = bucket.buffer().mul_(state.factor)
    future = dist.all_reduce(tensor, async_op=True).get_future()  # type: ignore[union-attr]
    return future.then(lambda f: f.value()[0])


class Averager:
    """The training step's view of the model: `forward` through DistributedDataParallel when distributed
    (the plain model otherwise), and the averaging of the gradients DDP does not own."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.state = _HookState()
        self.ddp: torch.nn.Module | None = None
        if not active() or not any(p.requires_grad for p in model.parameters()):
            return
        from torch.nn.parallel import DistributedDataParallel

        # DDP takes the parameters that require grad when it is built: one wrapper per training stage (a
        # two-stage method freezes parts). find_unused_parameters: exits or modules that a stage leaves out
        # of the loss (a final-only stage's other heads, BERxiT's alternate steps, AdapLeR's predictors in
        # stage 1) get no gradient, which DDP must be told to expect.
        self.ddp = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        self.ddp.register_comm_hook(self.state, _scaled_allreduce)  # type: ignore[operator]

    def __call__(self, *args: Any) -> Any:
        return (self.ddp or self.model)(*args)

    def close(self) -> None:
        """At the stage's end: the next stage wraps the model anew (other parameters train), and this
        wrapper's gradient hooks must not fire in it."""
        if self.ddp is not None:
            self.ddp._remove_autograd_hooks()  # type: ignore[operator]
            self.ddp = None

    def set_share(self, share: float) -> None:
        """This step's weight of this rank: its rows times the world size over the global batch's rows."""
        self.state.factor = share / world_size()

    def average(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average, with this step's weights, the gradients of `params` that DDP does not reduce: the
        objective's own parameters (ELBERT's exit weights), and those it sets after the backward pass
        (AdapLeR's eta and theta); one all-reduce over them flattened."""
        if not active():
            return
        import torch.distributed as dist

        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad]).mul_(self.state.factor)  # type: ignore[union-attr]
        dist.all_reduce(flat)
        offset = 0
        for p in with_grad:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
            offset += n

    def global_mean(self, value: torch.Tensor) -> float:
        """The global batch's mean of a per-rank mean (the step's loss, as one process would log it)."""
        if not active():
            return float(value.item())
        import torch.distributed as dist

        total = value.detach().float().reshape(1) * self.state.factor
        dist.all_reduce(total)
        return float(total.item())


def sum_over_ranks(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The element-wise sum of `tensor` (on the CPU) over the ranks; it travels through `device` (nccl
    reduces GPU tensors). Ranks that filled disjoint rows of zeros make the whole."""
    if not active():
        return tensor
    import torch.distributed as dist

    moved = tensor.to(device)
    dist.all_reduce(moved)
    return moved.cpu()


def spread_rng(seed: int, step: int) -> None:
    """Give every rank but 0 its own random stream (dropout): the same seed everywhere would draw the
    same masks on every rank's part of a batch. Rank 0 keeps the stream a single process has."""
    if active() and rank() > 0:
        torch.manual_seed(seed + 1_000_003 * rank() + step)


# --- failures --------------------------------------------------------------------------------------------


class PeerFailed(UserError):
    """Another rank stopped with an error: this one stops too (its MLflow run ends FAILED)."""


def _store() -> Any:
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()


def report_failure(err: BaseException) -> None:
    """Record in the process group's store why this rank stops, for rank 0 to read; never raises."""
    try:
        message = f"{type(err).__name__}: {err}".strip().rstrip(":")
        _store().set(
            f"{_FAILED_KEY}{rank()}", message.splitlines()[0][:500] if message else type(err).__name__
        )
    except Exception:
        pass


def peer_failure() -> str | None:
    """`rank 1 stopped (RuntimeError: ...)` when another rank recorded its failure, else None."""
    try:
        store = _store()
        for r in range(world_size()):
            key = f"{_FAILED_KEY}{r}"
            if r != rank() and store.check([key]):
                return f"rank {r} stopped ({store.get(key).decode(errors='replace')})"
    except Exception:
        pass
    return None


@contextmanager
def failures() -> Iterator[None]:
    """Inside a distributed run (else nothing): an error here is recorded for the other ranks; a stop that
    a peer's failure caused (torchrun's SIGTERM to the survivors, or a collective's error) becomes a
    PeerFailed naming it, which the MLflow run ends FAILED by. Once failing, a further SIGTERM (the
    launcher's) is ignored: the run's unwinding must not be cut short."""
    if not active():
        yield
        return
    try:
        yield
    except PeerFailed:
        raise
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        # this rank's own bad input is its own error; a SIGTERM or an error elsewhere may be a peer's doing
        peer = None if isinstance(err, UserError) else peer_failure()
        if peer is None and isinstance(err, KeyboardInterrupt):
            raise  # Ctrl-C or a SIGTERM of this job: KILLED, as in one process
        with suppress(ValueError):  # (off the main thread, signals are not ours to set)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if peer is not None:
            raise PeerFailed(f"{peer}: rank {rank()} stops too") from None
        report_failure(err)
        raise


def maybe_fault(steps: int) -> None:
    """The test hook of FAULT_ENV: raise on the named rank once it has taken `steps` optimizer steps."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec or not active():
        return
    target, _, after = spec.partition(":")
    if int(target) == rank() and steps >= int(after or 1):
        raise RuntimeError(f"injected fault on rank {rank()} after {steps} steps ({FAULT_ENV})")
