"""How AdapterOps runs: ``infra.stack`` starts the local services (PostgreSQL, SeaweedFS, MLflow,
Prefect) without Docker; ``compose/``, ``k8s/``, ``docker/`` and ``ci/`` beside it are the files
for production and CI."""
