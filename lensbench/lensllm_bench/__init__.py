"""LensBench: a benchmark of LLM selection built by running the product on a zoo of small models.

Kept apart from the product (its own source root, never imported by `lensllm` except lazily
by `lensllm lensbench`): the generator builds tasks from offline text, pre-trains a zoo of
tiny causal LMs, and measures every learning curve through the runner's own library call
(`lensllm.trial.recipe.run_trial`), so the benchmark tests the product, not a copy of it.
"""
