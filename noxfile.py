"""nox sessions: tests, lint, typecheck, bench. `nox -s tests` is what CI runs (via .ci/run)."""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

# the CPU build of torch first: an unpinned torch pulls several GB of CUDA packages
TORCH = "torch==2.13.0"


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "elastic_cli", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Issue 15's benchmarks, each printing ratios against a baseline timed in the same run, with its
    target. Needs ELASTIC_MODELS (../shared/assets/get-models.sh) and BENCH_DATA (a task's local folder,
    e.g. ../shared/assets/data/sst2); BENCH_CKPTS (calibrated checkpoints, space-separated) adds the
    checkpoint benchmarks. Run it on a quiet machine: `nox -s bench`."""
    _install(session)
    env = session.env
    data = env.get("BENCH_DATA") or session.error("set BENCH_DATA to a task's local data folder")
    ckpts = (env.get("BENCH_CKPTS") or "").split()
    run = session.run
    run("python", "benchmarks/startup.py")  # 5
    run("python", "benchmarks/latency.py")  # what the multi-exit machinery costs
    run("python", "benchmarks/train_throughput.py", "--data", data)  # 4
    run("python", "benchmarks/random_weights.py", "--dtypes", "float32")  # 2, 3, 7 without checkpoints
    for ckpt in ckpts:
        run("python", "benchmarks/sweep_cost.py", ckpt, "--data", data)  # 1
        run("python", "benchmarks/memory.py", ckpt, "--data", data)  # 6
    if ckpts:
        run("python", "benchmarks/latency_fidelity.py", *ckpts, "--data", data)  # 2, 7
        run("python", "benchmarks/batched.py", *ckpts, "--data", data)  # 3
