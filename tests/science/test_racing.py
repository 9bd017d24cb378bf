"""The racing policy (lensllm.science.racing) on synthetic laws, where the winner is known."""

import dataclasses

import numpy as np
import pytest

from lensllm.curves_io import read_curves
from lensllm.errors import CurveError, FitError
from lensllm.science.curves import Curves
from lensllm.science.laws import rectified_loss
from lensllm.science.race_replay import capped, replay_race
from lensllm.science.racing import (
    Assessment,
    RaceCandidate,
    RaceSettings,
    compute_fraction,
    decide,
    most_rounds,
    rank,
    round_zero,
    schedule,
)

SIZES = 100.0 * 2.0 ** np.arange(12)  # 100 .. 204,800
TARGET = 204_800
NOISE = 0.004  # log-space, like the published Gigaword curves
# (B, D_l, beta, E, parameters): "late" is best at the target but not at small sizes.
LAWS = {
    "late": (300.0, 40.0, 0.60, 0.90, 7e8),
    "early": (8.0, 4.0, 0.30, 1.20, 1e8),
    "steady": (40.0, 10.0, 0.35, 0.95, 3e8),
    "weak": (20.0, 6.0, 0.25, 1.60, 2e9),
    "weaker": (30.0, 8.0, 0.20, 1.90, 1e9),
    "flat": (2.0, 1.0, 0.20, 2.40, 5e8),
}


def synthetic(noise: float = NOISE, seed: int = 7) -> Curves:
    rng = np.random.default_rng(seed)
    losses, zero = [], []
    for B, D_l, beta, E, _ in LAWS.values():
        clean = rectified_loss(SIZES, B=B, D_l=D_l, beta=beta, E=E)
        losses.append(clean * np.exp(noise * rng.standard_normal(SIZES.size)))
        zero.append(rectified_loss(np.array([0.0]), B=B, D_l=D_l, beta=beta, E=E)[0])
    return Curves(
        models=tuple(LAWS),
        sizes=SIZES,
        losses=np.array(losses),
        zero_shot=np.array(zero),
        params=np.array([law[-1] for law in LAWS.values()]),
    )


@pytest.fixture(scope="module")
def curves() -> Curves:
    return synthetic()


@pytest.fixture(scope="module")
def replay(curves):
    return replay_race(curves, TARGET, RaceSettings(max_compute_fraction=0.5), seed=3)


def test_the_synthetic_winner_is_not_the_best_at_small_sizes(curves):
    assert curves.loss_at(TARGET).argmin() == 0
    assert curves.losses[:, 3].argmin() != 0


def test_the_race_finds_the_known_winner_and_drops_clear_losers_in_round_0(replay):
    assert replay.selected == "late"
    assert replay.relacc == 1.0
    first_out = {e.name for e in replay.decisions[0].eliminated}
    assert {"weaker", "flat"} <= first_out
    assert "late" not in first_out


def test_same_seed_same_race_and_another_seed_same_winner(curves, replay):
    again = replay_race(curves, TARGET, replay.settings, seed=3)
    assert again.decisions == replay.decisions
    other = replay_race(curves, TARGET, replay.settings, seed=4)
    assert other.selected == "late"
    assert other.decisions[0].assessments != replay.decisions[0].assessments


def test_no_size_is_planned_twice_and_each_round_runs_the_next_sizes_of_the_schedule(replay):
    plan = schedule(replay.settings, SIZES[SIZES < TARGET].astype(int))
    measured = {name: set(plan[0]) for name in LAWS}
    for d in replay.decisions:
        for name, sizes in d.next_sizes.items():
            assert not measured[name] & set(sizes), f"{name} re-runs {measured[name] & set(sizes)}"
            assert sizes == plan[d.round + 1]
            measured[name] |= set(sizes)


def test_an_eliminated_candidate_is_never_assessed_or_run_again(replay):
    gone: set[str] = set()
    for d in replay.decisions:
        assessed = {a.name for a in d.assessments}
        assert not assessed & gone
        assert not set(d.next_sizes) & (gone | {e.name for e in d.eliminated})
        gone |= {e.name for e in d.eliminated}
    assert all(r.lower_confidence == (r.name in gone) for r in replay.ranking)


def test_eliminations_record_the_round_and_the_reason(curves, replay):
    out = replay.decisions[0].eliminated[0]
    assert out.round == 0 and replay.decisions[0].law == "power"
    assert out.reason.startswith("P(best) ") and "< 0.001 (epsilon 0.01 x 0.1: ranked by the power law) after sizes up to 400" in out.reason
    by_laws = replay_race(curves, TARGET, dataclasses.replace(replay.settings, initial_sizes=4), seed=3)
    assert "< epsilon 0.01 after sizes up to 800" in by_laws.decisions[0].eliminated[0].reason


def test_the_power_law_thins_the_field_under_a_tenth_of_epsilon_and_never_stops_the_race(curves):
    """Round 0 of three sizes with one candidate far ahead: every other P(best) is under epsilon / 10, so
    they all leave, yet the race goes on; on four sizes the laws' P(best) stops it as confident."""
    ahead = [dataclasses.replace(c, losses=tuple(v * (0.5 if i == 0 else 1.0) for v in c.losses))
             for i, c in enumerate(_candidate(curves, i, 4) for i in range(curves.n_models))]
    three = [dataclasses.replace(c, sizes=c.sizes[:3], losses=c.losses[:3]) for c in ahead]
    thinned = decide(RaceSettings(), SIZES.astype(int), TARGET, three, round=0, seed=1)
    assert thinned.law == "power" and max(a.p_best for a in thinned.assessments) > 0.95
    assert thinned.stop is None and dict(thinned.next_sizes) == {"late": (800,)}
    assert {e.name for e in thinned.eliminated} == set(LAWS) - {"late"}
    settled = decide(RaceSettings(initial_sizes=4), SIZES.astype(int), TARGET, ahead, round=0, seed=1)
    assert settled.law != "power" and settled.stop == "confident"


@pytest.mark.parametrize("cap", [0.002, 0.01, 0.03, 0.1])
def test_the_compute_cap_is_respected_and_equals_cutting_the_uncapped_race(curves, replay, cap):
    ran = replay_race(curves, TARGET, dataclasses.replace(replay.settings, max_compute_fraction=cap), seed=3)
    round_zero_cost = replay.decisions[0].compute_fraction
    assert ran.compute_fraction <= max(cap, round_zero_cost) + 1e-12
    cut = capped(curves, TARGET, replay, cap)
    assert (cut.decisions, cut.ranking, cut.compute_fraction) == (ran.decisions, ran.ranking, ran.compute_fraction)


def test_a_capped_race_cannot_be_stretched_to_a_looser_cap(curves, replay):
    tight = capped(curves, TARGET, replay, 0.002)
    with pytest.raises(CurveError, match="cannot tell what a cap of 0.01 would do"):
        capped(curves, TARGET, tight, 0.01)


def test_without_a_cap_a_race_spends_at_most_a_fixed_budget_over_its_sizes(curves):
    ran = replay_race(curves, TARGET, RaceSettings(delta=1e-9, epsilon=1e-9), seed=0)
    assert ran.settings.max_compute_fraction is None and ran.stop != "computeCap"
    assert ran.compute_fraction <= SIZES[SIZES < TARGET].sum() / TARGET
    assert capped(curves, TARGET, ran, None).ranking == ran.ranking
    with pytest.raises(CurveError, match="cannot tell what no cap would do"):
        capped(curves, TARGET, capped(curves, TARGET, ran, 0.002), None)


def test_a_cap_below_round_0_still_runs_round_0_and_stops_there(curves):
    ran = replay_race(curves, TARGET, RaceSettings(max_compute_fraction=1e-6), seed=0)
    assert ran.rounds == 1 and ran.stop == "computeCap"
    assert len(ran.ranking) == len(LAWS)


@pytest.mark.parametrize(("initial", "step", "max_rounds"), [(4, 1, 7), (4, 2, 7), (5, 1, 3), (4, 1, 1)])
def test_a_race_never_runs_more_rounds_than_allowed(curves, initial, step, max_rounds):
    settings = RaceSettings(initial_sizes=initial, sizes_per_round=step, max_rounds=max_rounds, delta=1e-9, epsilon=1e-9, max_compute_fraction=1.0)
    ran = replay_race(curves, TARGET, settings, seed=0)
    assert ran.rounds <= most_rounds(settings) == max_rounds + 1  # and one that settles the laws' disagreement
    assert len(schedule(settings, SIZES[SIZES < TARGET].astype(int))) <= max_rounds


def test_a_race_on_three_initial_sizes_ranks_round_0_by_the_power_law_then_by_the_laws(curves):
    settings = RaceSettings(initial_sizes=3, max_compute_fraction=1.0, delta=1e-9)
    ran = replay_race(curves, TARGET, settings, seed=0)
    assert [max(a.largest_size for a in d.assessments) for d in ran.decisions[:2]] == [400, 800]
    assert ran.decisions[0].law == "power" and set(ran.decisions[0].law_leaders) == {"power"}
    assert all(d.law in ("lensllm", "vanilla") for d in ran.decisions[1:]) and ran.rounds > 1
    assert ran.selected == "late"


def test_the_schedule_starts_with_the_initial_sizes_then_adds_sizes_per_round():
    settings = RaceSettings(initial_sizes=4, sizes_per_round=2, max_rounds=3)
    assert schedule(settings, [1, 2, 3, 4, 5, 6, 7, 8, 9]) == [(1, 2, 3, 4), (5, 6), (7, 8)]
    assert schedule(settings, [1, 2, 3, 4]) == [(1, 2, 3, 4)]
    with pytest.raises(CurveError, match=r"initial_sizes is 4, but the ladder has only 3 sizes \(1, 2, 3\)"):
        schedule(settings, [1, 2, 3])  # a round 0 of three sizes would be another race than the one asked for
    assert round_zero(settings, [1, 2, 3, 4, 5], ["a", "b"]) == {"a": (1, 2, 3, 4), "b": (1, 2, 3, 4)}


def test_a_race_stops_confident_once_one_candidate_is_clearly_best():
    halved = synthetic()
    clear = dataclasses.replace(halved, losses=halved.losses * np.where(np.arange(len(LAWS)) == 0, 0.5, 1.0)[:, None])
    ran = replay_race(clear, TARGET, RaceSettings(), seed=0)
    assert ran.stop == "confident" and ran.selected == "late"
    assert max(a.p_best for a in ran.decisions[-1].assessments) >= 0.95


def test_the_most_likely_candidate_is_never_eliminated_even_by_a_large_epsilon(curves):
    points = [_candidate(curves, i, 6) for i in range(curves.n_models)]
    decision = decide(RaceSettings(epsilon=0.9), SIZES.astype(int), TARGET, points, round=0, seed=0)
    leader = max(decision.assessments, key=lambda a: a.p_best).name
    assert leader not in {e.name for e in decision.eliminated}
    assert len(decision.eliminated) == curves.n_models - 1


def test_p_best_sums_to_one_and_intervals_hold_the_prediction(replay):
    for d in replay.decisions:
        assert sum(a.p_best for a in d.assessments) == pytest.approx(1.0, abs=1e-9)
        for a in d.assessments:
            assert a.interval[0] <= a.predicted_loss <= a.interval[1] or a.interval[1] - a.interval[0] < 1e-9


def test_an_eliminated_candidates_curve_widens_the_survivors_intervals_not_their_p_best(curves):
    """Its points join the backtest of the law's error: a race's last rounds have few survivors to learn it from."""
    survivors = [_candidate(curves, i, 6) for i in range(2)]
    bent = _candidate(curves, 2, 6)
    # Out in round 0, and its later points fell well below where its first ones pointed.
    out = dataclasses.replace(bent, losses=tuple(v * (0.8 if k >= 4 else 1.0) for k, v in enumerate(bent.losses)),
                              eliminated_in=0)
    alone = decide(RaceSettings(), SIZES.astype(int), TARGET, survivors, round=1, seed=0).assessments
    beside = decide(RaceSettings(), SIZES.astype(int), TARGET, [*survivors, out], round=1, seed=0).assessments
    for a, b in zip(alone, beside):
        assert (b.name, b.p_best, b.predicted_loss) == (a.name, a.p_best, a.predicted_loss)
        assert b.interval[0] < a.interval[0]


def test_rank_puts_survivors_first_then_eliminated_by_their_last_prediction():
    candidates = [
        RaceCandidate("a", 1.0, (), (), eliminated_in=0),
        RaceCandidate("b", 1.0, (), ()),
        RaceCandidate("c", 1.0, (), (), eliminated_in=2),
        RaceCandidate("d", 1.0, (), ()),
    ]
    latest = {n: Assessment(n, 0, 100, loss, (loss, loss), 0.1) for n, loss in zip("abcd", (1.0, 3.0, 2.0, 4.0))}
    ranked = rank(candidates, latest)
    assert [r.name for r in ranked] == ["b", "d", "a", "c"]
    assert [r.lower_confidence for r in ranked] == [False, False, True, True]
    with pytest.raises(CurveError, match=r"no assessment for candidates \['d'\]"):
        rank(candidates, {n: latest[n] for n in "abc"})


def test_compute_fraction_weights_each_point_by_parameters():
    candidates = [RaceCandidate("small", 1.0, (100, 200), (2.0, 1.9)), RaceCandidate("big", 3.0, (100,), (2.0,))]
    assert compute_fraction(candidates, 1000) == pytest.approx((300 * 1 + 100 * 3) / (1000 * 4))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epsilon": 0.0}, "epsilon must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"max_compute_fraction": -1.0}, "max_compute_fraction"),
        ({"max_compute_fraction": 5.0}, "max_compute_fraction must be at most 1, got 5.0"),
        ({"initial_sizes": 0}, "initial_sizes must be a positive integer"),
        ({"initial_sizes": 2}, "initial_sizes must be at least 3"),
        ({"max_rounds": 2.5}, "max_rounds must be a positive integer"),
        ({"laws": ("lensllm", "magic")}, "laws must be distinct names among lensllm, vanilla"),
        ({"laws": ()}, "laws must be distinct"),
    ],
)
def test_bad_settings_are_typed_errors_naming_the_setting(change, match):
    with pytest.raises(CurveError, match=match):
        RaceSettings(**change)


def test_decide_rejects_duplicate_names_missing_sizes_and_an_empty_race(curves):
    good = _candidate(curves, 0, 5)
    with pytest.raises(CurveError, match="round must be >= 0"):
        decide(RaceSettings(), SIZES.astype(int), TARGET, [good], round=-1, seed=0)
    with pytest.raises(CurveError, match="unique"):
        decide(RaceSettings(), SIZES.astype(int), TARGET, [good, good], round=0, seed=0)
    with pytest.raises(CurveError, match="no candidate is left"):
        decide(RaceSettings(), SIZES.astype(int), TARGET, [dataclasses.replace(good, eliminated_in=0)], round=0, seed=0)
    with pytest.raises(FitError, match="candidate 'late': need at least 3 points"):
        decide(RaceSettings(), SIZES.astype(int), TARGET, [_candidate(curves, 0, 2)], round=0, seed=0)
    with pytest.raises(CurveError, match="parameter count of 'late'"):
        decide(RaceSettings(), SIZES.astype(int), TARGET, [dataclasses.replace(good, params=0.0)], round=0, seed=0)


def test_a_table_without_parameter_counts_cannot_be_raced(curves):
    with pytest.raises(CurveError, match="parameter counts"):
        replay_race(dataclasses.replace(curves, params=None), TARGET, RaceSettings())


def _candidate(curves: Curves, i: int, n_sizes: int) -> RaceCandidate:
    return RaceCandidate(
        curves.models[i],
        float(curves.params[i]),
        tuple(int(s) for s in curves.sizes[:n_sizes]),
        tuple(float(v) for v in curves.losses[i, :n_sizes]),
        float(curves.zero_shot[i]),
    )


@pytest.mark.parametrize("laws", [("lensllm",), ("vanilla",), ("lensllm", "vanilla")])
def test_every_law_set_honours_the_decision_contract(curves, laws):
    settings = RaceSettings(laws=laws, draws=50, initial_sizes=4)
    points = [_candidate(curves, i, 4) for i in range(curves.n_models)]
    decision = decide(settings, SIZES.astype(int), TARGET, points, round=0, seed=1)
    assert decision == decide(settings, SIZES.astype(int), TARGET, points, round=0, seed=1)
    assert decision.law in laws and set(decision.noise) == set(laws)
    assert [a.name for a in decision.assessments] == list(LAWS)
    assert sum(a.p_best for a in decision.assessments) == pytest.approx(1.0, abs=1e-9)
    for a in decision.assessments:
        assert a.round == 0 and a.largest_size == 800
        assert 0 < a.interval[0] <= a.interval[1] and np.isfinite(a.predicted_loss)
    out = {e.name for e in decision.eliminated}
    assert set(decision.next_sizes) == set(LAWS) - out
    assert decision.stop is None and all(sizes == (1600,) for sizes in decision.next_sizes.values())
    assert decision.compute_fraction == pytest.approx(compute_fraction(points, TARGET))
    assert decision.from_scratch == ()  # no uniform guess given: the race cannot tell


def test_a_decision_names_the_candidates_that_learn_from_scratch(curves):
    """A uniform guess's loss at or just above the zero-shot loss marks a candidate; well above it, not."""
    points = [_candidate(curves, i, 4) for i in range(curves.n_models)]
    points = [dataclasses.replace(c, uniform=c.zero_shot * (1.01 if i == 1 else 1.5)) for i, c in enumerate(points)]
    decision = decide(RaceSettings(draws=50), SIZES.astype(int), TARGET, points, round=0, seed=1)
    assert decision.from_scratch == (points[1].name,)


def test_no_law_s_leader_is_eliminated_even_when_the_best_fitting_law_gives_it_no_chance(curves_dir):
    """LensBench gloss (third draw), a race of four initial sizes: in round 0 the best-fitting law gives the other law's leader a P(best) under
    epsilon; that candidate stays, and it is the true best after full fine-tuning."""
    table = read_curves(curves_dir.parent / "lensbench-seed2" / "gloss.csv")
    target = float(table.sizes[-1])
    race = replay_race(table, target, RaceSettings(max_compute_fraction=0.3, initial_sizes=4), seed=0)
    protected = [
        (d.round, name)
        for d in race.decisions
        for law, name in d.law_leaders.items()
        if law != d.law and next(a.p_best for a in d.assessments if a.name == name) < race.settings.epsilon
    ]
    assert protected, "the race never had to keep a leader the best-fitting law gave no chance"
    for d in race.decisions:
        assert set(d.law_leaders) == {"lensllm", "vanilla"}
        assert not set(d.law_leaders.values()) & {e.name for e in d.eliminated}
    true = table.loss_at(target)
    assert {name for _, name in protected} == {race.selected} == {table.models[int(np.argmin(true))]}
    assert race.laws_agree


@pytest.fixture(scope="module")
def docstring(curves_dir):
    """LensBench docstring, eighth draw: the race ends with the laws naming different leaders, the vanilla law's the
    true best."""
    table = read_curves(curves_dir.parent / "lensbench-seed7" / "docstring.csv")
    return table, float(table.sizes[-1])


def test_a_race_whose_laws_disagree_settles_by_fine_tuning_their_leaders_on_the_target(docstring):
    table, target = docstring
    settled = replay_race(table, target, RaceSettings(), seed=0)
    unsettled = replay_race(table, target, RaceSettings(settle=False), seed=0)
    assert not unsettled.laws_agree and unsettled.stop == "exhausted" and unsettled.relacc < 0.6
    assert settled.decisions[:-2] == unsettled.decisions[:-1]  # the same race up to the stop it settles instead
    settling, last = settled.decisions[-2:]
    leaders = set(unsettled.decisions[-1].law_leaders.values())
    assert (settling.stop, settling.settles_instead_of, dict(settling.next_sizes)) == (None, "exhausted", dict.fromkeys(leaders, (2048,)))
    share = sum(table.params[table.models.index(n)] for n in leaders) / table.params.sum()
    assert settling.next_compute_fraction == pytest.approx(share)
    assert (last.stop, last.law, last.law_leaders, settled.stop) == ("settled", "measured", {}, "settled")
    truth = dict(zip(table.models, table.loss_at(target)))
    assert {a.name: (a.predicted_loss, a.interval, a.p_best) for a in last.assessments} == {
        n: (truth[n], (truth[n], truth[n]), float(n == settled.selected)) for n in leaders}
    assert settled.relacc == 1.0 and settled.selected == min(truth, key=truth.get)
    assert {e.name for e in last.eliminated} == {r.name for r in unsettled.ranking if r.eliminated_in is None} - leaders
    assert settled.compute_fraction == pytest.approx(unsettled.compute_fraction + share)
    assert not settled.laws_agree  # the laws' own verdict, from the last round they ranked


def test_a_cap_that_cannot_pay_for_settling_leaves_the_race_stopped_as_it_was(docstring):
    table, target = docstring
    unsettled = replay_race(table, target, RaceSettings(settle=False), seed=0)
    cap = unsettled.compute_fraction + 0.01
    ran = replay_race(table, target, RaceSettings(max_compute_fraction=cap), seed=0)
    assert (ran.decisions, ran.ranking, ran.stop) == (unsettled.decisions, unsettled.ranking, "exhausted")
    cut = capped(table, target, replay_race(table, target, RaceSettings(), seed=0), cap)
    assert (cut.decisions, cut.ranking, cut.compute_fraction) == (ran.decisions, ran.ranking, ran.compute_fraction)


def test_no_race_settles_unless_it_may_and_the_target_is_a_size_past_the_ladder(docstring):
    table, target = docstring
    ladder = [int(s) for s in table.sizes[:-1]]
    candidates = [
        RaceCandidate(n, float(table.params[i]), tuple(ladder), tuple(float(v) for v in table.losses[i, :-1]),
                      float(table.zero_shot[i]), uniform=float(table.uniform[i]))
        for i, n in enumerate(table.models)
    ]
    decide_now = lambda ladder, target, may: decide(RaceSettings(), ladder, target, candidates, 7, 0, may_settle=may)
    unmeasured = decide_now(ladder, target, False)
    assert unmeasured.stop == "exhausted" and not unmeasured.laws_agree and unmeasured.settles_instead_of is None
    assert decide_now(ladder, target, True).settles_instead_of == "exhausted"
    assert decide_now(ladder, target + 0.5, True).settles_instead_of is None  # no whole size to fine-tune on
