"""The LLMSelection operator: kopf handlers that turn selections into runner Jobs and
write the ranking back into each selection's status.

Layers, as in Katib: this package reconciles resources into Jobs; what to run next and
how to rank are decisions of `lensllm.selection` (pure, shared with local mode); the
trials themselves are `lensllm run-trial` containers. Nothing here imports torch.
"""
