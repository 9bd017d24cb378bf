"""What runs next: the trials a selection still needs.

A trial is (candidate, round, sizes). With a fixed budget there is one round: every
candidate gets one trial over all subset sizes. Adaptive budgets (racing) will add rounds
here, deciding from the status which candidates earn the next, larger sizes; the operator
and local mode only execute what this module returns.

A trial whose Job vanished before its result was read (status: Lost) runs again as the next
attempt of the same trial; an attempt resumes from what the earlier ones saved.
"""

from dataclasses import dataclass

from lensllm.selection.spec import LLMSelectionSpec
from lensllm.selection.status import LLMSelectionStatus


@dataclass(frozen=True)
class Trial:
    candidate: str
    round: int
    sizes: tuple[int, ...]
    attempt: int = 0


def next_trials(spec: LLMSelectionSpec, status: LLMSelectionStatus) -> list[Trial]:
    """Trials not yet started (or lost), in candidate order; the caller decides how many to launch now.

    Candidates the status does not know (a spec edited after the start) get none.
    """
    sizes = tuple(spec.budget.sizes)
    trials = []
    for candidate in spec.candidates:
        entry = status.candidates.get(candidate.name)
        if entry is None or entry.state != "Pending" or any(t.state != "Lost" for t in entry.trials):
            continue
        trials.append(Trial(candidate=candidate.name, round=0, sizes=sizes, attempt=len(entry.trials)))
    return trials
