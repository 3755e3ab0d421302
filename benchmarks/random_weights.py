"""Benchmarks 2, 3 and 7 of issue 15 without a trained checkpoint (for a GPU machine that has none): latency
does not depend on the weights, only on which exit each example takes, and that is computed from the same
outputs the adaptive path decides on, so the FLOPs speed-up and the latency speed-up describe the same run.

The models have random weights in the real architectures (mpnet-base: 12 layers x 768; the swift model of
the cascade: minilm-l3's 3 layers x 384), their exit heads' classifiers scaled up so that confidences
spread and examples leave at every exit. The inputs are random token ids with SST-2 dev's lengths
(lognormal around 25 tokens, 6-64). The threshold is chosen on the all-exits curve of these inputs: the one
closest to --speedup FLOPs, and one where no example leaves early.

  2. batch-1 latency speed-up over FLOPs speed-up (adaptive vs static, interleaved). Target >= 0.95; with
     nothing exiting >= 0.97.
  3. throughput at batch 32 and 128 (compaction), random order and sorted by length. Target >= 0.9.
  7. the E-LANG-shaped cascade (energy rule, swift then super) at batch 1. Target >= 0.95.

    python benchmarks/random_weights.py [--device cuda] [--dtypes float32,float16] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, MPNetConfig

from elastic_cli import calibration, exits, timing
from elastic_cli.config import ExitRuleConfig
from elastic_cli.cost import ExitCosts
from elastic_cli.data import Batch
from elastic_cli.exits import EnergyExitConfig
from elastic_cli.models.adapters import hf_model_from_config, make_adapter
from elastic_cli.models.cascade import Cascade, Member
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.signals import ExitSignals
from elastic_cli.stages.common import cost_dims

TARGET, TARGET_NONE, TARGET_BATCHED = 0.95, 0.97, 0.9
MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))
ENERGY = exits.build_rule(EnergyExitConfig())


def mpnet_base_config() -> MPNetConfig:
    """mpnet-base's own config when $ELASTIC_MODELS has it, else MPNetConfig's defaults (the same sizes)."""
    local = Path(os.environ.get("ELASTIC_MODELS", "~/.cache/elastic/models")).expanduser() / "mpnet-base"
    if (local / "config.json").is_file():
        return MPNetConfig(**json.loads((local / "config.json").read_text()))
    return MPNetConfig()


def random_model(family: str, config: Any, exit_layers: list[int], seed: int) -> MultiExitModel:
    torch.manual_seed(seed)
    adapter = make_adapter(family, hf_model_from_config(config).eval())
    model = MultiExitModel(adapter, exit_layers, num_labels=2, use_pretrained_pooler=False)
    with torch.no_grad():  # random heads are near-uniform: spread their confidences so exits differ
        for name, p in model.heads.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                p.mul_(8.0)
    return model.eval()


def sst2_like_lengths(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(23.0), 0.45, n)), 6, 64).astype(np.int64)


def make_batches(
    lengths: np.ndarray, rows: list[int], size: int, pad_id: int, device: torch.device, seed: int
) -> list[Batch]:
    """Batches of the given rows (in that order), random ids of each row's length, padded per batch."""
    rng = np.random.default_rng(seed)
    ids = {i: rng.integers(1000, 20000, int(lengths[i])) for i in rows}
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        width = int(max(lengths[i] for i in chunk))
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, i in enumerate(chunk):
            input_ids[r, : lengths[i]] = torch.from_numpy(ids[i])
            mask[r, : lengths[i]] = 1
        index = torch.tensor(chunk)
        out.append(Batch(input_ids, mask, None, torch.zeros(len(chunk), dtype=torch.long), index).to(device))
    return out


def all_exits(forward: Any, batches: list[Batch], n: int) -> ExitSignals:
    logits = None
    with torch.inference_mode():
        for b in batches:
            z = forward(b).float().cpu()
            logits = torch.empty(n, *z.shape[1:]) if logits is None else logits
            logits[b.index.cpu()] = z
    assert logits is not None
    return ExitSignals(logits)


def pick(rule: exits.ExitRule, signals: ExitSignals, costs: ExitCosts, speedup: float) -> float:
    """The threshold of the rule's curve on these outputs whose FLOPs speed-up is closest to `speedup`."""
    grid = rule.grid(2, signals.num_exits, 101, signals).tolist()
    labels = np.zeros(signals.logits.shape[0], dtype=np.int64)
    curve = calibration.threshold_curve(
        rule, signals, labels, list(costs.exit_layers), grid, None, costs=costs
    )
    return float(curve.iloc[(curve["flops_speedup"] - speedup).abs().argmin()]["threshold"])


def flops_x(
    rule: exits.ExitRule, signals: ExitSignals, costs: ExitCosts, t: float, rows: np.ndarray
) -> float:
    idx = exits.simulate(rule, signals, t)[0].numpy()[rows]
    return float(costs.reference_flops[rows].sum() / costs.exit_flops[rows, idx].sum())


def row(name: str, fx: float, ms: dict[str, np.ndarray], target: float) -> str:
    lat_x = float(ms["static"].mean() / ms["adaptive"].mean())
    ratio = lat_x / fx
    return (
        f"| {name} | {fx:.2f} | {lat_x:.2f} | {ms['static'].mean():.2f} / {ms['adaptive'].mean():.2f} | "
        f"{ratio:.2f} | >= {target:g} | {'yes' if ratio >= target else 'no'} |"
    )


def early_exit(a: argparse.Namespace, device: torch.device, dtype: torch.dtype, lines: list[str]) -> None:
    config = mpnet_base_config()
    model = random_model("mpnet", config, list(range(1, config.num_hidden_layers + 1)), a.seed).to(
        device, dtype
    )
    pad = int(config.pad_token_id or 0)
    lengths = sst2_like_lengths(a.n, a.seed)
    rows = list(range(a.n))
    costs = ExitCosts.multi_exit(lengths, model.exit_layers, cost_dims(model))
    signals = all_exits(
        lambda b: model(b.input_ids, b.attention_mask).logits,
        make_batches(lengths, rows, 64, pad, device, a.seed),
        a.n,
    )
    singles = {int(b.index[0]): b for b in make_batches(lengths, rows, 1, pad, device, a.seed)}
    tag = f"mpnet-base {str(dtype).replace('torch.', '')}"
    for name, t in ((f"~{a.speedup:g}x", pick(MAXPROB, signals, costs, a.speedup)), ("none exits", 1.01)):

        def adaptive(i: int, t: float = t) -> object:
            return model.adaptive(singles[i].input_ids, singles[i].attention_mask, None, MAXPROB, t)

        def static(i: int) -> object:
            return model.static_forward(singles[i].input_ids, singles[i].attention_mask)

        ms = timing.latency_per_example({"static": static, "adaptive": adaptive}, rows, warmup=a.warmup)
        target = TARGET_NONE if name == "none exits" else TARGET
        lines.append(
            row(
                f"2. {tag}, batch 1, {name} (t={t:.3g})",
                flops_x(MAXPROB, signals, costs, t, np.arange(a.n)),
                ms,
                target,
            )
        )
        if name == "none exits":
            continue
        for size in (32, 128):
            for order in ("random", "by length"):
                ordered = sorted(rows, key=lambda i: lengths[i]) if order == "by length" else rows
                chunks = make_batches(lengths, ordered, size, pad, device, a.seed)

                def static_batch(k: int, chunks: list[Batch] = chunks) -> object:
                    return model.static_forward(chunks[k].input_ids, chunks[k].attention_mask)

                def adaptive_batch(k: int, chunks: list[Batch] = chunks, t: float = t) -> object:
                    return model.adaptive(chunks[k].input_ids, chunks[k].attention_mask, None, MAXPROB, t)

                bms = timing.latency_per_example(
                    {"static": static_batch, "adaptive": adaptive_batch}, list(range(len(chunks))), warmup=1
                )
                lines.append(
                    row(
                        f"3. {tag}, batch {size}, {order}",
                        flops_x(MAXPROB, signals, costs, t, np.arange(a.n)),
                        bms,
                        TARGET_BATCHED,
                    )
                )


def cascade(a: argparse.Namespace, device: torch.device, dtype: torch.dtype, lines: list[str]) -> None:
    swift_config = BertConfig(
        hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536
    )
    super_config = mpnet_base_config()
    members = []
    for name, family, config in (("swift", "bert", swift_config), ("super", "mpnet", super_config)):
        model = random_model(family, config, [config.num_hidden_layers], a.seed).to(device, dtype)
        tokenizer = types.SimpleNamespace(pad_token_id=int(config.pad_token_id or 0))
        members.append(Member(name, model, tokenizer, 64, Path(".")))
    chain = Cascade(members)
    lengths = sst2_like_lengths(a.n, a.seed)
    rows = list(range(a.n))
    per_member = [make_batches(lengths, rows, 1, m.pad_id, device, a.seed) for m in members]
    singles = {int(group[0].index[0]): list(group) for group in zip(*per_member, strict=True)}
    costs = ExitCosts.cascade([lengths, lengths], [cost_dims(m.model) for m in members])
    outputs = [
        all_exits(
            lambda b, m=m: m.model.static_forward(b.input_ids, b.attention_mask)[:, None],
            make_batches(lengths, rows, 64, m.pad_id, device, a.seed),
            a.n,
        )
        for m in members
    ]
    signals = ExitSignals(torch.cat([o.logits for o in outputs], dim=1))
    t = pick(ENERGY, signals, costs, a.speedup)

    def adaptive(i: int) -> object:
        return chain.adaptive(singles[i], ENERGY, t)

    def static(i: int) -> object:
        return chain.static(singles[i])

    ms = timing.latency_per_example({"static": static, "adaptive": adaptive}, rows, warmup=a.warmup)
    tag = f"swift minilm-l3 + super mpnet-base {str(dtype).replace('torch.', '')}"
    lines.append(
        row(
            f"7. {tag}, batch 1, energy (t={t:.3g})",
            flops_x(ENERGY, signals, costs, t, np.arange(a.n)),
            ms,
            TARGET,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--n", type=int, default=200, help="examples (random ids of SST-2-like lengths)")
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"random weights, {a.n} examples, {where}")
    print(
        "| benchmark | FLOPs x | latency or throughput x | static / adaptive ms (mean) | / FLOPs x | target | met |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        lines: list[str] = []
        early_exit(a, device, dtype, lines)
        cascade(a, device, dtype, lines)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
