"""The science core: scaling laws, selectors and metrics.

Pure numpy/scipy. It must never import torch, kopf or anything that does I/O, so the
operator image can use it without the runner's dependencies.
"""
