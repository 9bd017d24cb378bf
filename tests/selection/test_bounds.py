"""A selection's size bounds keep its status small and every trial's compact result complete and exact."""

import json

import numpy as np
import pytest

from lensllm.science.laws import NTKSpectrum
from lensllm.science.racing import schedule
from lensllm.selection import status as st
from lensllm.selection.spec import MAX_CANDIDATES, MAX_SUBSET_SIZES, LLMSelectionSpec
from lensllm.trial.result import TERMINATION_LIMIT, Evaluation, LawFit, NTKSummary, Resources, SizePoint, TrainingStats, TrialResult

# A real API server refuses objects over about 1.5 MB (etcd's request limit).
OBJECT_SIZE_LIMIT = 1_500_000


def evaluation(rng: np.random.Generator, bits: float) -> Evaluation:
    return Evaluation(loss=bits * 2.1 + rng.random(), loss_per_example=bits * 40 + rng.random(), bits_per_byte=bits,
                      examples=1000, tokens=987654, seconds=123.456789 * rng.random(), flops=1.234567891e15 * rng.random())


def result(seed: int, sizes: list[int], n_modes: int, model: str = "org/model") -> TrialResult:
    """A succeeded trial with a law-shaped curve and a spectrum that has a null space (F(inf) > 0)."""
    rng = np.random.default_rng(seed)
    B, D_l, beta, E = 3.0 + seed, 50.0 * (seed + 1), 0.4 + 0.05 * seed, 0.6 + 0.02 * seed
    curve = [B / (D_l + s**beta) + E for s in sizes]
    eigenvalues = np.sort(rng.lognormal(0, 3, n_modes))[::-1]
    eigenvalues[-n_modes // 8:] = 1e-14 * eigenvalues[0]  # numerically null modes
    return TrialResult(
        status="Succeeded",
        candidate=model,
        target_size=sizes[-1] * 16,
        zero_shot=evaluation(rng, B / D_l + E),
        points=[
            SizePoint(size=s, test=evaluation(rng, bits),
                      train=TrainingStats(steps=s, tokens=s * 400, final_loss=bits, seconds=9.87654321 * s, flops=1.23456789e13 * s))
            for s, bits in zip(sizes, curve)
        ],
        ntk=NTKSummary(n=n_modes, eta=1e-4, scope="lora", parameters=4_399_104, eigenvalues=eigenvalues.tolist(),
                       projections_sq=rng.random(n_modes).tolist(), residual_norm_sq=float(n_modes), seconds=12.5),
        fits=[LawFit(method=m, predicted_loss=1.0, params={"B": 1.0, "beta": 0.5}) for m in ("vanilla", "rectified", "lensllm")],
        resources=Resources(device="cuda:0 (NVIDIA H100 80GB HBM3)", dtype="bfloat16", parameters=494_032_768,
                            trainable_parameters=4_399_104, peak_memory_bytes=40_123_456_789, peak_memory_kind="cudaAllocated"),
        seconds=98_765.4321,
    )


def selection(n_candidates: int, sizes: list[int], method: str = "lensllm") -> LLMSelectionSpec:
    return LLMSelectionSpec.model_validate({
        "candidates": [{"name": f"candidate-{i:02d}-" + "x" * 27, "model": "org/" + "m" * 200} for i in range(n_candidates)],
        "dataset": {"source": "org/data", "inputField": "q", "targetField": "a"},
        "budget": {"subsetSizes": sizes, "targetSize": sizes[-1] * 16},
        "method": method,
        "strategy": "fixed",
    })


def compact(r: TrialResult) -> TrialResult:
    message = r.to_termination_message()
    assert len(message.encode()) <= TERMINATION_LIMIT
    return TrialResult.model_validate_json(message)


@pytest.mark.parametrize("n_modes", [64, 256])
def test_the_compact_result_keeps_every_point_and_the_ntk_bounds_of_the_largest_budget(n_modes):
    sizes = [100_000 * 2**k for k in range(MAX_SUBSET_SIZES)]
    full = result(0, sizes, n_modes, model="org/" + "m" * 300).model_copy(update={"message": "note " * 80})
    small = compact(full)
    assert [p.size for p in small.points] == sizes
    assert [p.test.bits_per_byte for p in small.points] == [p.test.bits_per_byte for p in full.points]
    assert small.zero_shot.bits_per_byte == full.zero_shot.bits_per_byte
    assert small.total_flops() == pytest.approx(full.total_flops(), rel=1e-5)
    spectra = [NTKSpectrum(np.array(r.ntk.eigenvalues), np.array(r.ntk.projections_sq), r.ntk.eta) for r in (full, small)]
    assert spectra[1].initial == pytest.approx(spectra[0].initial, rel=1e-14)
    assert spectra[1].limit == pytest.approx(spectra[0].limit, rel=1e-14) and spectra[0].limit > 0


@pytest.mark.filterwarnings("ignore::lensllm.science.laws.LawWarning")  # F at its bound: where exact bounds matter most
@pytest.mark.parametrize("n_modes", [64, 256])
@pytest.mark.parametrize("method", ["lensllm", "default"])
def test_ranking_from_compact_results_equals_ranking_from_full_results(n_modes, method):
    sizes = [200, 400, 800, 1600, 3200]
    spec = selection(4, sizes, method)
    statuses = []
    for shrink in (lambda r: r, compact):
        status = st.initial_status(spec, 1, "now")
        for i, candidate in enumerate(spec.candidates):
            status = st.mark_trial(status, candidate.name, st.TrialRecord(job_name=f"j{i}", sizes=sizes, state="Running"))
            status = st.record_result(status, spec, candidate.name, f"j{i}", shrink(result(i, sizes, n_modes)), gpus=1)
        statuses.append(st.finalize(status, spec, 1, "now"))
    full, small = statuses
    assert full.phase == small.phase == "Complete"
    assert [r.candidate for r in small.ranking] == [r.candidate for r in full.ranking]
    for name, entry in full.candidates.items():
        assert small.candidates[name].predicted_loss == pytest.approx(entry.predicted_loss, rel=1e-9)
        assert small.candidates[name].points == entry.points


def test_the_status_of_the_largest_selection_stays_far_below_the_object_size_limit():
    sizes = [100_000 * 2**k for k in range(MAX_SUBSET_SIZES)]
    spec = selection(MAX_CANDIDATES, sizes)
    status = st.initial_status(spec, 1, "2026-01-01T00:00:00Z")
    for i, candidate in enumerate(spec.candidates):
        for attempt in range(st.MAX_ATTEMPTS):
            record = st.TrialRecord(job_name="j" * 63 + str(attempt), attempt=attempt, sizes=sizes, state="Running")
            status = st.mark_trial(status, candidate.name, record)
        status = st.record_result(status, spec, candidate.name, "j" * 63 + "2", compact(result(i, sizes, 256)), gpus=8)
        status.candidates[candidate.name].message = "m" * 1000
    size = len(json.dumps(status.dump()).encode())
    assert size < OBJECT_SIZE_LIMIT / 4, size


def test_the_status_of_the_largest_race_stays_far_below_the_object_size_limit():
    """Every candidate in every one of the race's (at most 7) rounds, and the most a round that settles the laws'
    disagreement runs (each law's leader and the most likely candidate), each trial lost twice, each eliminated once."""
    sizes = [100_000 * 2**k for k in range(MAX_SUBSET_SIZES)]
    spec = selection(MAX_CANDIDATES, sizes).model_copy(update={"strategy": "race"})
    rounds = [*schedule(spec.race_settings(), sizes), (spec.budget.target_size,)]
    contenders = spec.candidates[: len(spec.race.laws) + 1]
    running = [spec.candidates] * (len(rounds) - 1) + [contenders]
    status = st.initial_status(spec, 1, "2026-01-01T00:00:00Z")
    for i, candidate in enumerate(spec.candidates):
        for round_, ran in enumerate(rounds):
            for attempt in range(st.MAX_ATTEMPTS if candidate in running[round_] else 0):
                record = st.TrialRecord(job_name="j" * 60 + f"{round_}{attempt}", round=round_, attempt=attempt,
                                        sizes=list(ran), state="Running")
                status = st.mark_trial(status, candidate.name, record)
        status = st.record_result(status, spec, candidate.name, "j" * 60 + "62", compact(result(i, sizes, 256)), gpus=8)
        entry = status.candidates[candidate.name]
        entry.p_best, entry.interval, entry.eliminated_in, entry.elimination_reason = 0.001, [0.5, 0.7], 3, "r" * 100
    assert len(rounds) == st.MAX_ROUNDS
    status.race.rounds = [
        st.RoundRecord(round=r, sizes={c.name: list(ran) for c in running[r]}, law="lensllm", noise={"lensllm": 0.01, "vanilla": 0.02},
                       next_sizes={c.name: list(ran) for c in running[r]},
                       eliminated=[st.Elimination(candidate=c.name, reason="r" * 100) for c in spec.candidates[r::len(rounds)]],
                       compute_fraction=0.01, stop="exhausted", settles_instead_of="computeCap")
        for r, ran in enumerate(rounds)
    ]
    size = len(json.dumps(st.LLMSelectionStatus.model_validate(status.dump()).dump()).encode())
    assert size < OBJECT_SIZE_LIMIT / 4, size
