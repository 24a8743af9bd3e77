"""Links into the MLflow UI that commands print, for a tracking server only: the embedded store
has no address (``mlflow ui`` opens it). They replace MLflow's own run links, which it printed
twice per build, under the run's first name (switched off in ``flows.cli.quiet``)."""

from __future__ import annotations

import os
import urllib.parse

from .mlflow_names import adapter_model

__all__ = ["review_url", "run_url"]


def _server() -> str | None:
    """The tracking server's root address, or None when MLflow is not a server. A user and
    password in ``MLFLOW_TRACKING_URI`` stay out: a link is pasted where others read it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def review_url(name: str, mlflow_version: int) -> str | None:
    """The page of adapter ``name``'s mirrored version ``mlflow_version``, where a reviewer
    promotes it; None without a server or a mirror."""
    server = _server()
    if server is None or mlflow_version < 1:
        return None
    return f"{server}/#/models/{adapter_model(name)}/versions/{mlflow_version}"


def run_url(run_id: str) -> str | None:
    """The page of MLflow run ``run_id`` (the UI finds its experiment); None without a server."""
    server = _server()
    return f"{server}/#/runs/{run_id}" if server and run_id else None
