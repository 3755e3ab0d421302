"""Training throughput (issue 15, benchmark 4): `elastic train method=static` against a plain PyTorch +
transformers fine-tuning loop written here, on the same model, data size, batch, length, optimizer and
threads; and the exit heads' overhead of `early_exit` and `sweet` training against `static`.

elastic's rate is the `train/examples_per_second` its train run logs (the optimizer steps only: not
start-up, not the epoch's calibration scoring, not the first step); the plain loop's is timed the same
way (steps after the first). Variants run interleaved, their order rotated per repeat.

    ELASTIC_MODELS=~/.cache/elastic/models python benchmarks/train_throughput.py --model minilm-l6 \
        --data ../shared/assets/data/sst2 [--steps 30] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGET = 0.95  # elastic static / plain loop
CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = ("static", "early_exit", "sweet")
FAMILY = {"minilm-l3": "bert", "minilm-l6": "bert", "mpnet-base": "mpnet"}


def texts_and_labels(data: Path, n: int, length: int) -> tuple[list[str], list[int]]:
    """The training examples `elastic train` uses for these settings (its seeded subset of n), so the
    plain loop sees the same sentences, and so the same lengths, as elastic's runs."""
    from hydra import compose, initialize_config_dir

    from elastic_cli.checks import to_root
    from elastic_cli.data import load_task_data
    from elastic_cli.plugins import register_configs

    register_configs()
    overrides = [
        "task=sst2",
        f"task.data_dir={data}",
        f"task.max_train_samples={n}",
        f"task.max_seq_length={length}",
        "task.calibration_max_samples=64",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_root(compose(config_name="train", overrides=overrides))
    train = load_task_data(cfg.task, cfg.seed).train
    return [texts[0] for texts in train.texts], [int(label) for label in train.labels]


def plain_loop(model_dir: Path, data: Path, steps: int, batch: int, length: int) -> float:
    """Examples/s of a hand-written fine-tuning loop: AdamW, linear warm-up and decay, clipping."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.train()
    texts, labels = texts_and_labels(data, steps * batch, length)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-5
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    seconds, examples = 0.0, 0
    for k in range(steps):
        start = time.perf_counter()
        enc = tokenizer(
            texts[k * batch : (k + 1) * batch],
            truncation=True,
            max_length=length,
            padding=True,
            return_tensors="pt",
        )
        out = model(**enc, labels=torch.tensor(labels[k * batch : (k + 1) * batch]))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        out.loss.item()
        if k:  # the first step pays one-off costs, as elastic's does
            seconds += time.perf_counter() - start
            examples += batch
    return examples / seconds


def elastic_rate(
    method: str, name: str, data: Path, steps: int, batch: int, length: int, threads: int
) -> float:
    """train/examples_per_second of one `elastic train` run of `steps` steps, read from its store."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="train-bench-") as out:
        command = [
            sys.executable, "-m", "elastic_cli", "train", f"method={method}", f"backbone={name}", "task=sst2",
            f"task.data_dir={data}", f"task.max_train_samples={steps * batch}", f"task.max_seq_length={length}",
            "task.calibration_max_samples=64", f"train.batch_size={batch}", "train.epochs=1", "train.lr=5e-5",
            "train.save_every=0", f"device.threads={threads}", f"outputs={out}",
        ]  # fmt: skip
        # (a tracking URI in the environment would send the run elsewhere than `outputs=`)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        subprocess.run(command, check=True, capture_output=True, env=env)
        client = mlflow.MlflowClient(f"sqlite:///{out}/mlflow.db")
        experiment = client.get_experiment_by_name("sst2")
        assert experiment is not None
        (run,) = client.search_runs([experiment.experiment_id])
        return float(run.data.metrics["train/examples_per_second"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6", choices=sorted(FAMILY))
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model_dir = Path(os.environ["ELASTIC_MODELS"]).expanduser() / a.model
    variants = ["plain", *METHODS]
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(a.repeat):
        for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
            if v == "plain":
                rate = plain_loop(model_dir, a.data, a.steps, a.batch, a.length)
            else:
                rate = elastic_rate(v, a.model, a.data, a.steps, a.batch, a.length, a.threads)
            rates[v].append(rate)
            print(f"  repeat {i + 1} {v}: {rate:.1f} examples/s", file=sys.stderr)
    med = {v: float(np.median(r)) for v, r in rates.items()}
    print(
        f"{a.model}, batch {a.batch} x {a.length} tokens, {a.steps} steps, {a.threads} threads, {a.repeat} repeats"
    )
    print("| variant | median examples/s | min-max | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        values = np.asarray(rates[v])
        base = "plain" if v in ("plain", "static") else "static"
        ratio = med[v] / med[base]
        target = f">= {TARGET:g} of plain" if v == "static" else "-"
        met = ("yes" if ratio >= TARGET else "no") if v == "static" else "-"
        shown = "1.00" if v == "plain" else f"{ratio:.2f} of {base}"
        print(f"| {v} | {med[v]:.1f} | {values.min():.1f}-{values.max():.1f} | {shown} | {target} | {met} |")


if __name__ == "__main__":
    main()
