"""One learning-curve trial for one candidate model: the runner pod's work.

`spec` and `result` are plain pydantic (the operator imports them to build Jobs and parse
termination messages, without torch); `recipe` and the modules it uses need the runner
extra (torch, transformers, datasets, peft). `lensllm run-trial` is the entry point.
"""

from lensllm.trial.result import TrialResult
from lensllm.trial.spec import CandidateSpec, DatasetSpec, LoraSpec, NTKSpec, OutputSpec, TrainingSpec, TrialSpec

__all__ = [
    "CandidateSpec",
    "DatasetSpec",
    "LoraSpec",
    "NTKSpec",
    "OutputSpec",
    "TrainingSpec",
    "TrialResult",
    "TrialSpec",
]
