"""Fixtures of the monitoring test: the emulated cluster and its parts, from tests/support/cluster.py."""

from cluster import kube, kubelet, namespace, operator_process

__all__ = ["kube", "kubelet", "namespace", "operator_process"]
