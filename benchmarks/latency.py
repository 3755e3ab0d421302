"""What the multi-exit machinery costs, on real models, as ratios against the Hugging Face forward
measured in the same run (the machine is shared and noisy: absolute times drift, ratios hold).

Variants, batch 1 (interleaved per example, warm-up first, median reported):
  hf              the Hugging Face model's own forward (the baseline)
  static          elastic's layer-by-layer loop + the final exit head (the static model we time)
  all_exits       the adaptive path with a threshold no example reaches: every layer + every head + the rule
  first_exit      the adaptive path with threshold 0: every example leaves after layer 1
and batched throughput (examples/s) of hf, static and all_exits.

    ELASTIC_MODELS=~/.cache/elastic/models python benchmarks/latency.py --models minilm-l6 mpnet-base
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

from elastic_cli import exits, timing
from elastic_cli.config import BackboneConfig, ExitRuleConfig
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel

FAMILY = {"minilm-l3": "bert", "minilm-l6": "bert", "mpnet-base": "mpnet"}
SST2_DEV = Path(__file__).resolve().parents[2] / "shared" / "assets" / "data" / "sst2" / "dev.tsv"


def sentences(n: int) -> list[str]:
    with SST2_DEV.open() as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows[:n]]


def bench(name: str, n: int, warmup: int, batch_size: int, batches: int) -> None:
    folder = Path(os.environ["ELASTIC_MODELS"]).expanduser() / name
    torch.manual_seed(0)
    backbone, tok = build_backbone(BackboneConfig(name=name, family=FAMILY[name], path=str(folder)))
    model = MultiExitModel(backbone, list(range(1, backbone.num_layers + 1)), num_labels=2).eval()
    rule = exits.build_rule(ExitRuleConfig(name="maxprob"))
    texts = sentences(max(n, batch_size * batches))
    singles = [tok(t, return_tensors="pt") for t in texts[:n]]

    def args(enc) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")

    variants = {
        "hf": lambda i: backbone.model(**singles[i]),
        "static": lambda i: model.static_forward(*args(singles[i])),
        "all_exits": lambda i: model.adaptive(*args(singles[i]), rule, 1.1),
        "first_exit": lambda i: model.adaptive(*args(singles[i]), rule, 0.0),
    }
    ms = timing.latency_per_example(variants, list(range(n)), warmup=warmup)
    base = float(np.median(ms["hf"]))
    print(
        f"\n{name}: {backbone.num_layers} layers x {backbone.hidden_size}, batch 1, {n} SST-2 dev sentences"
    )
    print(f"{'variant':<12} {'p50 ms':>8} {'p90 ms':>8} {'p50 / hf':>9}")
    for key, values in ms.items():
        s = timing.summarize_ms(values)
        print(f"{key:<12} {s['p50_ms']:8.2f} {s['p90_ms']:8.2f} {s['p50_ms'] / base:9.3f}")

    chunks = [
        tok(texts[k * batch_size : (k + 1) * batch_size], padding=True, return_tensors="pt")
        for k in range(batches)
    ]
    batched = {
        "hf": lambda b: backbone.model(**b),
        "static": lambda b: model.static_forward(*args(b)),
        "all_exits": lambda b: model.adaptive(*args(b), rule, 1.1),
    }
    rates = {}
    for key, fn in batched.items():

        def one(k: int, fn=fn) -> int:
            fn(chunks[k % batches])
            return batch_size

        with torch.inference_mode():
            rates[key] = timing.throughput(one, batches, warmup=1)
    print(f"{'variant':<12} {'ex/s':>8} {'/ hf':>9}   (batch {batch_size})")
    for key, rate in rates.items():
        print(f"{key:<12} {rate:8.1f} {rate / rates['hf']:9.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm-l6", "mpnet-base"], choices=sorted(FAMILY))
    p.add_argument("--n", type=int, default=100, help="examples timed at batch 1")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if not os.environ.get("ELASTIC_MODELS"):
        sys.exit("set ELASTIC_MODELS to the folder of ../shared/assets/get-models.sh")
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in a.models:
        bench(name, a.n, a.warmup, a.batch_size, a.batches)


if __name__ == "__main__":
    main()
