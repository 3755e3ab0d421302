"""Multi-process training (elastic_cli/distributed.py): two CPU processes with the gloo backend, started by
torchrun as a user starts them, train the weights one process trains with the same global batch; a rank
that fails ends rank 0's MLflow run FAILED, with no checkpoint, promptly. The pieces (the shard of a batch,
the launcher's variables, the one-line errors) are tested in-process.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# light imports only: the gradient test's spawned processes import this module
from elastic_cli import distributed
from elastic_cli.config import DeviceConfig
from elastic_cli.errors import UserError

# dropout off (the backbone's and the heads'), so that one process and two compute the same steps; a few
# steps on a tiny model: the comparison is of the arithmetic, not of learning
TINY = [
    "backbone=tiny-bert",
    "task=sst2",
    "task.max_seq_length=32",
    "task.max_train_samples=60",
    "train.lr=1e-3",
    "train.batch_size=8",
    "train.epochs=1",
    "train.max_steps=4",
    "train.warmup_ratio=0.0",
    "train.save_every=0",
    "method.head_dropout=0.0",
    "device.threads=1",
    "device.eval_batch_size=16",
]
# the tiny backbone's own dropout has no setting: the entry point builds it without
NO_DROPOUT_ENTRY = """
import sys
from elastic_cli.models import tiny

_build = tiny.hf_model_from_config


def _no_dropout(config):
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return _build(config)


tiny.hf_model_from_config = _no_dropout
from elastic_cli.cli import main

main()
"""
TOLERANCE = 1e-5
NOISY_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import write_synthetic_task

    root = tmp_path_factory.mktemp("ddp")
    write_synthetic_task(root / "data", n_train=90, n_dev=30, seed=0)
    (root / "entry.py").write_text(NO_DROPOUT_ENTRY)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" and k not in ("RANK", "WORLD_SIZE")
    }
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def _checkpoint(out: Path, method: str) -> Path:
    return out / "checkpoints" / "sst2" / method / "tiny-bert" / "seed42"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights (a cascade's: every model's, by its name)."""
    from safetensors.torch import load_file

    from elastic_cli import checkpoint

    if (folder / checkpoint.WEIGHTS).is_file():
        return load_file(str(folder / checkpoint.WEIGHTS))
    members = sorted(p for p in (folder / "members").iterdir() if (p / checkpoint.WEIGHTS).is_file())
    assert members, f"no weights in {folder}"
    return {f"{m.name}/{k}": v for m in members for k, v in load_file(str(m / checkpoint.WEIGHTS)).items()}


def _differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(_differences(a, b).values())


def _train_both(workdir: Path, tmp_path: Path, method: str, *extra: str) -> tuple[Path, Path]:
    """The same training run in one process and in two (torchrun), side by side; their checkpoints."""
    args = ["train", f"method={method}", *TINY, f"task.data_dir={workdir / 'data'}", *extra]
    args += ["tracking.enabled=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    entry = str(workdir / "entry.py")
    procs = [
        subprocess.Popen(
            cmd, cwd=workdir, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        for cmd in (
            [sys.executable, entry, *args, f"outputs={one}"],
            _torchrun(entry, *args, f"outputs={two}"),
        )
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"exit {proc.returncode}\nSTDERR:\n{stderr[-6000:]}"
    return _checkpoint(one, method), _checkpoint(two, method)


def _assert_same_training(
    workdir: Path, tmp_path: Path, method: str, *extra: str, noisy: str | None = None
) -> float:
    """One process and two train the same weights, to TOLERANCE; the weights under `noisy` (a name
    prefix: the modules holding a weight whose gradient is only rounding noise) to NOISY_TOLERANCE."""
    one, two = _train_both(workdir, tmp_path, method, *extra)
    differences = _differences(_weights(one), _weights(two))
    exact = {k: v for k, v in differences.items() if noisy is None or not k.startswith(noisy)}
    largest, largest_exact = max(differences.values()), max(exact.values())
    print(
        f"{method}: max |one process - two processes| = {largest:.3g} over "
        f"{len(differences)} tensors, {largest_exact:.3g} outside {noisy}"
    )
    assert largest_exact < TOLERANCE, sorted(exact.items(), key=lambda kv: -kv[1])[:3]
    assert len(exact) > len(differences) // 2  # the prefix names a part of the model, not most of it
    assert largest < NOISY_TOLERANCE
    return largest


# --- the pieces ----------------------------------------------------------------------------------------


def test_each_batch_is_split_across_the_processes():
    from elastic_cli.data import Encoded, batches
    from elastic_cli.data.encoding import shard_rows

    rows = torch.arange(7)
    parts = [shard_rows(rows, r, 2) for r in range(2)]
    assert [p.tolist() for p, _ in parts] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [share for _, share in parts] == [8 / 7, 6 / 7]  # n_r * world / n: their mean is 1
    # a last batch smaller than the processes: the one left out takes a stand-in row that weighs nothing
    assert [(p.tolist(), share) for p, share in (shard_rows(torch.tensor([5]), r, 2) for r in range(2))] == [
        ([5], 2.0),
        ([5], 0.0),
    ]
    enc = Encoded(
        input_ids=[[1] * (i % 5 + 2) for i in range(19)], token_type_ids=None, labels=torch.zeros(19).numpy()
    )
    whole = [b.index.tolist() for b in batches(enc, 8, pad_id=0, shuffle=True, seed=3)]
    shards = [
        [b.index.tolist() for b in batches(enc, 8, pad_id=0, shuffle=True, seed=3, shard=(r, 3))]
        for r in range(3)
    ]
    assert [sum((s[i] for s in shards), []) for i in range(len(whole))] == whole  # each row once, in order


def test_the_launchers_variables():
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert distributed.place_from_env(torchrun) == distributed.Place(1, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    assert distributed.place_from_env(slurm) == distributed.Place(3, 4, 1, "srun")
    assert distributed.place_from_env({}) is None
    with pytest.raises(UserError, match="outside 0..WORLD_SIZE-1"):
        distributed.place_from_env({**torchrun, "RANK": "4"})
    # every Slurm job sets SLURM_PROCID: only torchrun's variables, or device.distributed=true, say "train together"
    assert distributed.wanted(DeviceConfig(), torchrun) and not distributed.wanted(DeviceConfig(), slurm)
    assert distributed.wanted(DeviceConfig(distributed=True), slurm)
    assert distributed.first_host("gpu[03-05,07],cpu1") == "gpu03"
    assert distributed.first_host("node7,node8") == "node7"


@pytest.mark.parametrize(
    "env,device,batch,needle",
    [
        ({}, DeviceConfig(distributed=True), 8, "needs a launcher: run `torchrun"),
        (
            {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"},
            DeviceConfig(),
            2,
            "train.batch_size=2 is smaller",
        ),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, DeviceConfig(name="mps"), 8, "not device=mps"),
    ],
    ids=["no-launcher", "batch-too-small", "mps"],
)
def test_bad_combinations_are_user_errors(monkeypatch: pytest.MonkeyPatch, env, device, batch, needle):
    for name in (*distributed.TORCHRUN_VARS, *distributed.SLURM_VARS.values()):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=needle.replace("(", r"\(")), distributed.session(device, batch):
        pass
    assert not distributed.active()


def test_a_refusal_every_rank_makes_is_said_by_rank_0_alone(monkeypatch: pytest.MonkeyPatch):
    # (torchrun would print each rank's copy of the same line)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as stopped, distributed.session(DeviceConfig(), 2):
        pass
    assert stopped.value.code == 2 and not isinstance(stopped.value, UserError)
    assert not distributed.active()


def test_calibrate_and_evaluate_refuse_torchrun(monkeypatch: pytest.MonkeyPatch):
    from elastic_cli.stages.common import setup_device

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="are for `elastic train`"):
        setup_device(DeviceConfig())


ROWS = (5, 1)  # split 3 and 2; a single row, which one process takes and the other stands in for


def _average_worker(rank: int, port: int, out: str) -> None:
    """One of two processes: a step of a small model and an objective weight, through `Averager`, on this
    process's part of the rows; writes the gradients it ends with."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    with distributed.session(DeviceConfig(name="cpu", distributed=True, distributed_timeout=60), 5):
        torch.save([_one_step(n, shard=(rank, 2)) for n in ROWS], f"{out}.{rank}")


def _one_step(n: int, shard: tuple[int, int] | None) -> list[torch.Tensor]:
    """The gradients of weight * cross-entropy over `n` rows (this process's part of them, if `shard`)."""
    from elastic_cli.data.encoding import shard_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    weight = torch.nn.Parameter(torch.tensor(0.7))  # an objective's own parameter
    x, y = torch.randn(n, 3), torch.tensor([0, 1, 1, 0, 1][:n])
    rows, share = shard_rows(torch.arange(n), *shard) if shard else (torch.arange(n), 1.0)
    stepper = distributed.Averager(model, torch.device("cpu"))
    stepper.set_share(share)
    loss = weight * torch.nn.functional.cross_entropy(stepper(x[rows]), y[rows])
    loss.backward()
    stepper.average([weight])
    logged = stepper.global_mean(loss)  # the global batch's loss, as one process logs it
    stepper.close()
    return [p.grad.clone() for p in model.parameters()] + [weight.grad.clone(), torch.tensor(logged)]


def test_averaged_gradients_are_the_global_batchs(tmp_path: Path):
    """Over 2 processes, the averaged gradients of the model (DDP) and of an objective's own weight
    (Averager.average), and the logged loss, are those of the mean loss over all rows in one process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_average_worker, args=(port, str(tmp_path / "grads")), nprocs=2, join=True)
    for rank in range(2):
        for n, got in zip(ROWS, torch.load(tmp_path / f"grads.{rank}")):
            expected = _one_step(n, shard=None)
            assert max(float((a - b).abs().max()) for a, b in zip(got, expected)) < 1e-6, (rank, n)


# --- two processes train as one --------------------------------------------------------------------------


def test_two_processes_train_elbert_as_one(workdir: Path, tmp_path: Path):
    """A multi-exit model and an objective with parameters of its own (ELBERT's exit weights, averaged
    apart from the model's); each global batch of 7 rows is split 4 and 3."""
    _assert_same_training(workdir, tmp_path, "elbert", "train.batch_size=7")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,extra",
    [
        pytest.param("static", (), marks=pytest.mark.extended),  # one exit (elbert's test covers many)
        pytest.param("sweet", (), marks=pytest.mark.extended),  # stop-gradients at the exits
        ("deebert", ()),  # stage 2 freezes all but the exit heads
        pytest.param("elasticbert", (), marks=pytest.mark.extended),  # gradient equilibrium
        pytest.param("berxit", (), marks=pytest.mark.extended),  # alternate steps leave exits unused
        pytest.param("fastbert", (), marks=pytest.mark.extended),  # self-distillation, attention heads (*)
        pytest.param("multi_model", ("method.exit_layers=[1,2]",), marks=pytest.mark.extended),  # a cascade
        pytest.param("adapler", (), marks=pytest.mark.extended),  # eta and theta, averaged apart (*)
    ],
)
def test_two_processes_train_each_method_as_one(workdir: Path, tmp_path: Path, method: str, extra: tuple):
    # (*) weights whose gradient is zero but for rounding (FastBERT's attention key bias, AdapLeR's predictors'
    # output bias: a softmax cancels them) get lr-sized Adam steps from that noise, in one process and in two
    # alike but not the same (1.5e-4 here), and pass it on to their own module's other weights: those
    # modules are held to 1e-3, the backbone and everything else to 1e-5
    noisy = {"fastbert": "heads.fastbert.", "adapler": "predictors."}.get(method)
    _assert_same_training(workdir, tmp_path, method, *extra, noisy=noisy)


# --- a failing rank -------------------------------------------------------------------------------------


def _statuses(database: Path) -> list[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM runs ORDER BY start_time")]


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_failed_without_a_checkpoint(workdir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["train", "method=sweet", *TINY, f"task.data_dir={workdir / 'data'}", f"outputs={out}"]
    args += ["train.max_steps=-1", "train.epochs=50"]  # far more than it gets to
    started = time.monotonic()
    proc = _run(_torchrun("-m", "elastic_cli", *args), workdir, **{distributed.FAULT_ENV: "1:3"})
    seconds = time.monotonic() - started
    assert proc.returncode != 0
    assert "error: rank 1 stopped (RuntimeError: injected fault on rank 1 after 3 steps" in proc.stderr
    assert "rank 0 stops too" in proc.stderr
    assert _statuses(out / "mlflow.db") == ["FAILED"]  # rank 0's run, the only one
    assert not _checkpoint(out, "sweet").exists()
    assert seconds < 180, seconds  # no rank waited for the dead one (the collectives' timeout is 600 s)


@pytest.mark.slow
@pytest.mark.extended
def test_two_processes_resume_an_interrupted_run(workdir: Path, tmp_path: Path):
    """Rank 1 fails after 5 steps; rank 0 had written the training state at step 4; the next torchrun
    resumes from it, in the same MLflow run, to the weights one uninterrupted process trains."""
    args = [
        "method=early_exit",
        *TINY,
        f"task.data_dir={workdir / 'data'}",
        "train.max_steps=8",
        "train.save_every=2",
    ]
    entry = str(workdir / "entry.py")
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(_run([sys.executable, entry, "train", *args, "tracking.enabled=false", f"outputs={one}"], workdir))
    failed = _run(
        _torchrun(entry, "train", *args, f"outputs={two}"), workdir, **{distributed.FAULT_ENV: "1:5"}
    )
    assert failed.returncode != 0
    ckpt = _checkpoint(two, "early_exit")
    from elastic_cli.stages import train_state

    assert train_state.load(train_state.state_path(ckpt)).position.step == 4 and not ckpt.exists()
    resumed = _ok(_run(_torchrun(entry, "train", *args, f"outputs={two}"), workdir))
    assert "resuming from" in resumed.stderr
    assert _statuses(two / "mlflow.db") == ["FINISHED"]
    assert _max_difference(_weights(_checkpoint(one, "early_exit")), _weights(ckpt)) < TOLERANCE
