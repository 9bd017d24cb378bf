"""Fixtures of the operator's end-to-end tests: an emulated cluster, its kubelet, the operator process, kubectl.

They live in tests/support/cluster.py (on the pythonpath); importing them here is how pytest finds them.
"""

from cluster import kube, kubectl, kubelet, namespace, operator_process
from harness_tools import batch, core
from selections import custom, stand_in, start_operator

__all__ = ["batch", "core", "custom", "kube", "kubectl", "kubelet", "namespace", "operator_process", "stand_in",
           "start_operator"]
