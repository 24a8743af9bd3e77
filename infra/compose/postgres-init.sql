-- One PostgreSQL for the registry, MLflow and Prefect (separate databases).
CREATE DATABASE adapterops_registry;
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
