"""What the tests share: the real components they start (S3, the operator process), how they talk to the
control plane, the data and tiny models they generate, and the example manifests."""
