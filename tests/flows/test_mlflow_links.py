"""The MLflow UI pages commands print (``review: URL``), from ``MLFLOW_TRACKING_URI``."""

from __future__ import annotations

import pytest

from flows.mlflow_links import review_url, run_url


@pytest.mark.parametrize(
    ("tracking", "version_page", "run_page"),
    [
        ("http://mlflow:5000", "http://mlflow:5000/#/models/a/versions/3", "http://mlflow:5000/#/runs/r1"),
        # behind a proxy, under a path; the trailing slash people write
        ("https://tools.example.com/mlflow/", "https://tools.example.com/mlflow/#/models/a/versions/3", "https://tools.example.com/mlflow/#/runs/r1"),
        # a login in the address stays out of a link others read
        ("http://alice:s3cret@mlflow:5000", "http://mlflow:5000/#/models/a/versions/3", "http://mlflow:5000/#/runs/r1"),
        # the embedded store (unset) and a SQLite store: no server, no link
        ("", None, None),
        ("sqlite:///tmp/mlflow.db", None, None),
    ],
)  # fmt: skip
def test_links_point_at_the_servers_pages_and_only_at_a_servers(
    monkeypatch: pytest.MonkeyPatch, tracking: str, version_page: str | None, run_page: str | None
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.delenv("ADAPTEROPS_MLFLOW_PREFIX", raising=False)
    assert review_url("a", 3) == version_page
    assert run_url("r1") == run_page


def test_the_version_link_names_the_model_under_the_registrys_prefix(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("ADAPTEROPS_MLFLOW_PREFIX", "staging.")
    assert review_url("a", 3) == "http://mlflow:5000/#/models/staging.a/versions/3"
    assert review_url("a", 0) is None  # nothing mirrored (MLflow was down)
