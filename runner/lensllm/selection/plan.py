"""What runs next: the trials a selection still needs, round by round.

A trial is (candidate, round, sizes). With a fixed budget there is one round: every
candidate gets one trial over all subset sizes. A race (spec.strategy race) runs rounds:
round 0 gives every candidate the first sizes of the ladder; once every trial of a round has
ended, `advance` asks the racing policy (`lensllm.science.racing.decide`) who is eliminated
and which next sizes the others run, and records that decision in the status. The operator
and local mode only execute what this module returns.

Everything here is a pure function of the spec and the status: the decision after a round
is deterministic under the selection's seed, so an operator that restarts before writing it
recomputes the same one, and once written it is never recomputed.

A trial whose Job vanished before its result was read (status: Lost) runs again as the next
attempt of the same trial; an attempt resumes from what the earlier ones saved.
"""

from dataclasses import dataclass

from lensllm.errors import CurveError
from lensllm.science import racing
from lensllm.selection import status as st
from lensllm.selection.spec import LLMSelectionSpec


@dataclass(frozen=True)
class Trial:
    candidate: str
    round: int
    sizes: tuple[int, ...]
    attempt: int = 0

    def ends_on(self, target_size: int) -> bool:
        """Whether the trial fine-tunes on the target size (a settling round's): it then saves the model it made."""
        return self.sizes[-1] == target_size


def current_round(status: st.LLMSelectionStatus) -> int:
    """The round in progress: the number of rounds decided so far (always 0 with a fixed budget)."""
    return 0 if status.race is None else len(status.race.rounds)


def due(spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> dict[str, tuple[int, ...]]:
    """The sizes each candidate runs in the current round (none once a race has stopped)."""
    names = [c.name for c in spec.candidates]
    if status.race is None:
        return {name: tuple(spec.budget.sizes) for name in names}
    if status.race.stop is not None:
        return {}
    if not status.race.rounds:
        return racing.round_zero(spec.race_settings(), spec.budget.sizes, names)
    return {name: tuple(sizes) for name, sizes in status.race.rounds[-1].next_sizes.items()}


def next_trials(spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> list[Trial]:
    """Trials of the current round not yet started (or lost), in candidate order; the caller decides how many
    to launch now.

    Candidates the status does not know (a spec edited after the start) get none.
    """
    round_ = current_round(status)
    trials = []
    for name, sizes in due(spec, status).items():
        entry = status.candidates.get(name)
        if entry is None or entry.state != "Pending":
            continue
        tried = [t for t in entry.trials if t.round == round_]
        if any(t.state != "Lost" for t in tried):
            continue
        trials.append(Trial(candidate=name, round=round_, sizes=sizes, attempt=len(tried)))
    return trials


def round_ended(spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> bool:
    """Whether a race's current round has ended and waits for `advance` to decide it (cheap: no fits)."""
    if status.race is None or status.race.stop is not None:
        return False
    return all(status.candidates[name].state in st.TERMINAL for name in due(spec, status) if name in status.candidates)


def advance(spec: LLMSelectionSpec, status: st.LLMSelectionStatus) -> st.LLMSelectionStatus:
    """A race whose current round has ended, with that round decided; any other status as it is."""
    if not round_ended(spec, status):
        return status
    round_ = current_round(status)
    unweighed = [name for name, entry in status.candidates.items() if entry.points and entry.parameters is None]
    if unweighed:
        return st.end_race(status, "failed", f"{', '.join(unweighed)}: no parameter count in the trial's result, and the "
                           "race weighs each candidate's compute by it")
    candidates = st.race_candidates(status)
    if not any(c.in_race for c in candidates):
        return st.end_race(status, "noCandidateLeft")
    try:
        decision = racing.decide(
            spec.race_settings(), spec.budget.sizes, spec.budget.target_size, candidates, round=round_, seed=spec.seed,
            may_settle=st.may_settle(status, spec.budget.target_size), settling=st.settling(status),
        )
    except CurveError as err:
        return st.end_race(status, "failed", f"round {round_} could not be decided: {err}")
    return st.record_round(status, decision)
