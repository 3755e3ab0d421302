"""Peak memory (issue 15, benchmark 6): the peak RSS of `elastic train` (a few steps at batch 32 x 128
tokens) and of `elastic evaluate` on 2,000 and 10,000 examples, each in its own process (the kernel's
ru_maxrss of the child). Evaluation keeps every exit's logits, not hidden states: what grows from 2,000
to 10,000 examples is compared with what the logits and the encoded inputs need, and flagged beyond 4x that.

SST-2's dev split has 872 sentences, so the evaluation reads its training sentences as the evaluated
split (`task.local_files`), on a copy of the checkpoint (evaluate caches its outputs beside it).

    ELASTIC_MODELS=~/.cache/elastic/models python benchmarks/memory.py CKPT --data ../shared/assets/data/sst2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = (2000, 10000)
FLAG_OVER = 4.0  # growth beyond this many times the logits + inputs is flagged


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of `python -m elastic_cli ARGS`, in MB."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastic_cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"elastic {' '.join(args)} failed:\n{proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return usage.ru_maxrss / 1024  # KB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--length", type=int, default=128)
    a = p.parse_args()
    meta = json.loads((a.ckpt / "meta.json").read_text())
    model = [
        f"method={meta['method']}",
        f"backbone={meta['backbone']}",
        "task=sst2",
        f"task.data_dir={a.data}",
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        train = peak_rss_mb(
            [
                "train", *model, "task.max_train_samples=320", f"task.max_seq_length={a.length}",
                "task.calibration_max_samples=64", "train.batch_size=32", "train.max_steps=5",
                "train.save_every=0", f"outputs={tmp}/train",
            ]
        )  # fmt: skip
        rows.append((f"train, batch 32 x {a.length} tokens, 5 steps", train, ""))
        peaks = {}
        for n in SIZES:
            copy = Path(tmp) / f"ckpt-{n}"
            shutil.copytree(a.ckpt, copy, ignore=shutil.ignore_patterns("cache"))
            peaks[n] = peak_rss_mb(
                [
                    "evaluate", *model, f"ckpt={copy}", "task.local_files={train:train,validation:train}",
                    f"task.max_eval_samples={n}", "evaluate.latency=false", f"outputs={tmp}/eval-{n}",
                ]
            )  # fmt: skip
            rows.append((f"evaluate, {n} examples", peaks[n], ""))
        exits, labels = len(meta["exit_layers"]), max(1, int(meta["num_labels"]))
        # per example: float32 logits of every exit, and the encoded ids (int64, up to max_seq_length)
        per_example = exits * labels * 4 + meta["max_seq_length"] * 8 * 2
        grown = (peaks[SIZES[1]] - peaks[SIZES[0]]) * 1024 * 1024 / (SIZES[1] - SIZES[0])
        note = f"{grown / 1024:.1f} KB per example more; logits + inputs need {per_example / 1024:.1f} KB"
        flag = "FLAG: grows beyond the logits" if grown > FLAG_OVER * per_example else "ok"
        rows.append(("evaluate growth", float("nan"), f"{note} ({flag})"))
    print(f"{meta['method']} / {meta['backbone']} ({exits} exits)")
    print("| what | peak RSS MB | note |")
    print("|---|---|---|")
    for what, mb, note in rows:
        print(f"| {what} | {'-' if mb != mb else f'{mb:.0f}'} | {note} |")


if __name__ == "__main__":
    main()
