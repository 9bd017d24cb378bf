"""The LLMSelection resource: its spec and status models, the plan of trials, and the
pure status updates shared by the Kubernetes operator and `lensllm select --local`.

Pure pydantic and the science core: no kopf, no kubernetes client, no torch.
"""
