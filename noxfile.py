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
    """Real-model benchmarks: needs ELASTIC_MODELS (../shared/assets/get-models.sh)."""
    _install(session)
    session.run("python", "benchmarks/latency.py", *session.posargs)
