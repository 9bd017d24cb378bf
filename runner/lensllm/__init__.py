"""LensLLM: choose the LLM to fine-tune from learning curves on small subsets.

`lensllm.science` holds the laws, selectors and metrics (numpy/scipy only); the CLI,
the runner and the operator build on it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lensllm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
