"""Pipelines from spec to promoted adapter: data, training, evaluation, registration, promotion."""

__version__ = "0.1.0"
