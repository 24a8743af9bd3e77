"""Entry points for Prefect deployments: a worker loads this file by path, so it uses absolute
imports (the installed ``flows`` package) where the package's own modules use relative ones."""

from flows.pipelines import build, retrain, sync

__all__ = ["build", "retrain", "sync"]
