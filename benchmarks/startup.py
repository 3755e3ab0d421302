"""Start-up time of the CLI (issue 15, benchmark 5): `elastic --help` and `elastic evaluate --cfg job`,
against the bare interpreter start (`python -c pass`) measured interleaved in the same run.

Each command runs `--repeat` times in a fresh process, the three commands interleaved (rotated) so that
load from elsewhere hits them alike; prints the median and min-max wall time, the ratio to the bare
interpreter, and the target (under 1.0 s and 1.5 s).

    python benchmarks/startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "elastic --help": [sys.executable, "-m", "elastic_cli", "--help"],
    "elastic evaluate --cfg job": [sys.executable, "-m", "elastic_cli", "evaluate", "--cfg", "job"],
}
TARGETS_S = {"elastic --help": 1.0, "elastic evaluate --cfg job": 1.5}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    a = p.parse_args()
    names = list(COMMANDS)
    for name in names:  # warm the file cache: the first start reads every module from disk
        wall(COMMANDS[name])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(a.repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            seconds[name].append(wall(COMMANDS[name]))
    base = float(np.median(seconds["python -c pass"]))
    print("| command | median s | min-max s | / bare python | target | met |")
    print("|---|---|---|---|---|---|")
    for name in names:
        values = np.asarray(seconds[name])
        median = float(np.median(values))
        target = TARGETS_S.get(name)
        met = "-" if target is None else ("yes" if median < target else "no")
        print(
            f"| `{name}` | {median:.3f} | {values.min():.3f}-{values.max():.3f} | {median / base:.1f}x | "
            f"{'-' if target is None else f'< {target:g} s'} | {met} |"
        )


if __name__ == "__main__":
    main()
