import json

import pytest
from pydantic import ValidationError

from lensllm.trial import DatasetSpec, NTKSpec, TrainingSpec, TrialResult, TrialSpec
from lensllm.trial.result import Evaluation, LawFit, NTKSummary, SizePoint, TrainingStats
from lensllm.trial.spec import validation_message

MINIMAL = {
    "candidate": {"model": "org/model"},
    "dataset": {"source": "org/data", "inputField": "question", "targetField": "answer"},
    "subsetSizes": [100, 200, 400],
    "targetSize": 6400,
}


def with_changes(**changes) -> dict:
    spec = json.loads(json.dumps(MINIMAL))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return spec


def first_error(data: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        TrialSpec.model_validate(data)
    return validation_message(caught.value)


def test_spec_reads_camel_case_and_python_names_and_writes_camel_case():
    by_alias = TrialSpec.model_validate(with_changes(training__learningRate=2e-5, ntk__probeSize=16))
    by_name = TrialSpec(
        candidate={"model": "org/model"},
        dataset=DatasetSpec(source="org/data", input_field="question", target_field="answer"),
        subset_sizes=[100, 200, 400],
        target_size=6400,
        training=TrainingSpec(learning_rate=2e-5),
        ntk=NTKSpec(probe_size=16),
    )
    assert by_alias == by_name
    dumped = by_name.model_dump(by_alias=True)
    assert dumped["training"]["learningRate"] == 2e-5 and dumped["ntk"]["probeSize"] == 16
    assert TrialSpec.model_validate_json(by_name.model_dump_json(by_alias=True)) == by_name


def test_ntk_eta_defaults_to_the_training_learning_rate():
    assert TrialSpec.model_validate(with_changes(training__learningRate=3e-4)).ntk_eta == 3e-4
    assert TrialSpec.model_validate(with_changes(ntk__eta=0.5)).ntk_eta == 0.5


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"subsetSizes": [200, 100]}, "subsetSizes: sizes must be strictly increasing"),
        ({"subsetSizes": []}, "subsetSizes:"),
        ({"subsetSizes": list(range(1, 66)), "targetSize": 1000}, "subsetSizes: List should have at most 64 items"),
        ({"targetSize": 300}, "targetSize 300 is below the largest subset size 400"),
        ({"training__learningRate": 0}, "training.learningRate: Input should be greater than 0"),
        ({"training__method": "qlora"}, "training.method:"),
        ({"dataset__textFeild": "text"}, "dataset.textFeild: Extra inputs are not permitted"),
        ({"dataset__textField": "text"}, "dataset: give either textField or inputField + targetField"),
        ({"dataset__promptTemplate": "Q: {question}"}, "dataset.promptTemplate: must contain {input}"),
        ({"dataset__testSplit": "train"}, "dataset: testSplit 'train' is the trainSplit too; give a held-out split"),
        ({"candidate__dtype": "int8"}, "candidate.dtype:"),
        ({"ntk__scope": "lora"}, "ntk.scope lora needs training.method lora"),
    ],
)
def test_invalid_spec_message_is_one_line_naming_the_field(changes, names):
    message = first_error(with_changes(**changes))
    assert names in message
    assert "\n" not in message


def test_missing_task_fields_are_reported_on_the_dataset():
    spec = with_changes()
    del spec["dataset"]["targetField"]
    assert first_error(spec).startswith("dataset: give textField, or both inputField and targetField")


def _undocumented(schema: dict) -> list[str]:
    missing = []
    for name, model in [("TrialSpec", schema), *schema.get("$defs", {}).items()]:
        for field, prop in model.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
    return missing


@pytest.mark.parametrize("model", [TrialSpec, TrialResult])
def test_every_field_of_the_wire_models_has_a_description(model):
    assert _undocumented(model.model_json_schema(by_alias=True)) == []


def _evaluation(loss: float) -> Evaluation:
    return Evaluation(
        loss=loss,
        loss_per_example=loss * 9.5,
        bits_per_byte=loss / 2.3,
        examples=256,
        tokens=2432,
        seconds=1.234567891,
        flops=1.23456789e12,
    )


def _bulky_result(n_points: int, n_modes: int) -> TrialResult:
    """A result far over 4096 bytes: many points, a long spectrum, a long message and fit details."""
    spec = TrialSpec.model_validate(
        with_changes(subsetSizes=[100 * 2**k for k in range(n_points)], targetSize=100 * 2**n_points)
    )
    return TrialResult(
        status="Failed",
        reason="OutOfMemory",
        message="out of memory: " + "x" * 600,
        candidate=spec.candidate.model,
        target_size=spec.target_size,
        spec=spec,
        zero_shot=_evaluation(3.0),
        points=[
            SizePoint(
                size=s,
                test=_evaluation(2.9 - 0.01 * i),
                train=TrainingStats(steps=s, tokens=s * 50, final_loss=2.5, seconds=12.3456789, flops=1.23456789e14),
            )
            for i, s in enumerate(spec.subset_sizes)
        ],
        ntk=NTKSummary(
            n=n_modes,
            eta=1e-4,
            scope="all",
            parameters=10**8,
            eigenvalues=[1000.0 / (k + 1) for k in range(n_modes)],
            projections_sq=[1.0 / (k + 1) for k in range(n_modes)],
            residual_norm_sq=5.0,
            seconds=3.3,
        ),
        fits=[
            LawFit(
                method="vanilla",
                predicted_loss=2.1,
                params={"B": 1.23456789, "beta": 0.3456789, "E": 1.23456789},
                warning="beta at a bound " * 5,
            )
        ],
    )


@pytest.mark.parametrize(("n_points", "n_modes"), [(6, 256), (14, 64), (40, 512)])
def test_termination_message_fits_in_4096_bytes_and_parses_as_a_result(n_points, n_modes):
    result = _bulky_result(n_points, n_modes)
    assert len(result.to_json()) > 4096
    message = result.to_termination_message()
    compact = TrialResult.model_validate_json(message)
    assert len(message.encode()) <= 4096
    assert (compact.status, compact.reason, compact.candidate) == (result.status, result.reason, result.candidate)
    assert compact.points and compact.points[-1].size == result.points[-1].size
    assert compact.ntk.eigenvalues[0] == result.ntk.eigenvalues[0]  # the top mode is kept as it is
    assert sum(compact.ntk.projections_sq) == pytest.approx(sum(result.ntk.projections_sq), rel=1e-12)  # F(0)
    assert compact.ntk.residual_norm_sq == result.ntk.residual_norm_sq


def test_termination_message_leaves_out_only_the_oldest_points_when_nothing_else_is_left():
    result = _bulky_result(40, 8)
    compact = TrialResult.model_validate_json(result.to_termination_message())
    kept = [p.size for p in compact.points]
    assert kept == [p.size for p in result.points][-len(kept) :]
    assert len(kept) < 40 and "oldest points left out" in compact.message


def test_termination_message_of_thousands_of_points_keeps_as_many_of_the_newest_as_fit():
    bulky = _bulky_result(40, 8)
    points = [p.model_copy(update={"size": i + 1}) for i, p in enumerate(bulky.points * 75)]
    result = bulky.model_copy(update={"points": points})
    message = result.to_termination_message()
    compact = TrialResult.model_validate_json(message)
    kept = [p.size for p in compact.points]
    assert 0 < len(kept) < 3000 and kept == [p.size for p in result.points][-len(kept) :]
    one_point = len(json.dumps(compact.model_dump(mode="json", by_alias=True, exclude_none=True)["points"][0]))
    assert len(message.encode()) <= 4096 < len(message.encode()) + one_point + 1  # no room for one more
    assert f"{3000 - len(kept)} oldest points left out" in compact.message


def test_small_result_goes_to_the_termination_log_unchanged():
    result = _bulky_result(1, 4).model_copy(update={"message": "short", "fits": []})
    assert TrialResult.model_validate_json(result.to_termination_message()) == result
