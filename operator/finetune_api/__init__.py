"""The finetune.dev API: pydantic models that are the single source of the CRDs and of the trainer contract.

Imports pydantic only (and PyYAML in the CRD writer); no Kubernetes client, no I/O at import.
"""
