"""Fixtures for the flows tests: an isolated ADAPTEROPS_HOME with embedded MLflow and registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def embedded_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Embedded defaults in a fresh folder: SQLite registry, local artifacts, local MLflow."""
    home = tmp_path / "home"
    monkeypatch.setenv("ADAPTEROPS_HOME", str(home))
    for variable in (
        "MLFLOW_TRACKING_URI",
        "ADAPTEROPS_REGISTRY_URL",
        "ADAPTEROPS_ARTIFACTS_URL",
        "ADAPTEROPS_MLFLOW_PREFIX",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    return home
