"""The finetune-operator: Kopf handlers over a pure reconcile function.

Layers (import-linter keeps them): handlers -> reconcile, kube, storage -> builders -> finetune_api.
Only `handlers` imports kopf; only `kube` talks to the Kubernetes API; only `storage` talks to S3;
`reconcile` and `builders` are pure and take the clock as an argument.
"""
