"""Shared fixtures. Every test runs offline: no hub is reachable here, nor in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("ELASTIC_MODELS"):
        return
    skip = pytest.mark.skip(reason="needs ELASTIC_MODELS (../shared/assets/get-models.sh)")
    for item in items:
        if "real" in item.keywords:
            item.add_marker(skip)
