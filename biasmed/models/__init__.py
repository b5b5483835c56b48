"""Model adapters behind one small protocol (`base.Model`), resolved from spec strings."""

from biasmed.models.base import Answer, FatalRunError, GenParams, Model, RetryableError
from biasmed.models.registry import PROVIDERS, resolve_model

__all__ = ["Answer", "FatalRunError", "GenParams", "Model", "PROVIDERS", "RetryableError", "resolve_model"]
