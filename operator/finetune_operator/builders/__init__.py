"""Pure builders: Kubernetes objects (as dicts) from API models. No I/O, no clock."""
