"""Kopf handlers (the only importer of kopf). Importing this package registers them."""

from finetune_operator.handlers import operator

__all__ = ["operator"]
