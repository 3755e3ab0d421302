"""`method.exit=NAME` and `method.swift=NAME` pick config-group options (one, or a multirun list);
anything else passes through untouched."""

from __future__ import annotations

import pytest

from elastic_cli.cli import _exit_group_shorthand


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("method.exit=patience", "method/exit=patience"),
        ("method.exit=maxprob,energy", "method/exit=maxprob,energy"),
        ("method.swift=minilm-l6", "backbone@method.swift=minilm-l6"),
        ("method.swift=minilm-l3,minilm-l6", "backbone@method.swift=minilm-l3,minilm-l6"),
        # values of the nodes' fields are ordinary overrides
        ("method.exit.threshold=0.9", "method.exit.threshold=0.9"),
        ("method.swift.path=/models/x", "method.swift.path=/models/x"),
        ("method.swift_ckpt=/ckpt", "method.swift_ckpt=/ckpt"),
        ("method.exit=", "method.exit="),
    ],
)
def test_shorthands(arg: str, expected: str) -> None:
    assert _exit_group_shorthand(arg) == expected
