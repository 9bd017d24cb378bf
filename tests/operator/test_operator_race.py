"""A race run by the real operator against the emulated API server: rounds of real `lensllm run-trial` Jobs."""

import pytest
from demo_selection import demo_models, selection_manifest
from selections import GROUP, PLURAL, VERSION, comparable, create, run_locally, wait_for_phase

# Every size up to 256 is affordable on the demo's 1,024 examples; elimination at P(best) < 5%, a stop at >= 99%.
RACE = {"strategy": "race", "budget": {"baseSize": 16, "doublings": 4, "targetSize": 1024, "maxComputeFraction": 1.0},
        "race": {"epsilon": 0.05, "delta": 0.01}, "parallelism": 3}


def test_the_operator_runs_a_race_in_rounds_and_ends_with_local_mode_s_status(
    demo_world, namespace, kubelet, start_operator, custom, tmp_path
):
    operator = start_operator()
    doc = selection_manifest(demo_world, demo_models(demo_world), name="race", **RACE)
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "race", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    assert status.best == "tiny-llama" and status.ranking[-1].candidate == "tiny-gpt2"
    rounds = status.race.rounds
    assert len(rounds) >= 2 and "tiny-gpt2" in [e.candidate for e in rounds[0].eliminated]
    gpt2 = status.candidates["tiny-gpt2"]
    assert [(t.round, t.sizes, t.state) for t in gpt2.trials] == [(0, [16, 32, 64, 128], "Succeeded")]
    assert gpt2.lower_confidence and gpt2.eliminated_in == 0
    llama = status.candidates["tiny-llama"]
    assert [(t.round, t.sizes) for t in llama.trials] == [(0, [16, 32, 64, 128]), (1, [256])]
    assert all(t.job_name.startswith(f"race-tiny-llama-r{t.round}-") for t in llama.trials)
    assert status.race.compute_fraction < status.race.fixed_budget_fraction

    assert operator.sample("lensllm_selection_rounds", namespace=namespace, selection="race") == len(rounds)
    assert operator.sample("lensllm_selection_compute_fraction", namespace=namespace, selection="race") == pytest.approx(
        status.race.compute_fraction
    )
    cluster_status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")["status"]
    assert comparable(run_locally(doc, tmp_path)) == comparable(cluster_status)
