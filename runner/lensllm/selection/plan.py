"""What runs next: the trials a selection still needs.

A trial is (candidate, round, sizes). With a fixed budget there is one round: every
candidate gets one trial over all subset sizes. Adaptive budgets (racing) will add rounds
here, deciding from the status which candidates earn the next, larger sizes; the operator
and local mode only execute what this module returns.
"""

from dataclasses import dataclass

from lensllm.selection.spec import LLMSelectionSpec
from lensllm.selection.status import LLMSelectionStatus


@dataclass(frozen=True)
class Trial:
    candidate: str
    round: int
    sizes: tuple[int, ...]


def next_trials(spec: LLMSelectionSpec, status: LLMSelectionStatus) -> list[Trial]:
    """Trials not yet started, in candidate order; the caller decides how many to launch now."""
    sizes = tuple(spec.budget.sizes)
    return [
        Trial(candidate=c.name, round=0, sizes=sizes)
        for c in spec.candidates
        if status.candidates[c.name].state == "Pending" and not status.candidates[c.name].trials
    ]
