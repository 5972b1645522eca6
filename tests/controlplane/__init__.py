"""The test control plane: upstream kube-apiserver, kube-controller-manager and etcd (see cluster.py)."""
