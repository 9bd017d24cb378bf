import json

import pytest
import torch
from jsonl import write_jsonl

from lensllm.trial import data
from lensllm.trial.data import Row, load_task_rows
from lensllm.trial.examples import IGNORE, collate, encode_rows
from lensllm.trial.failures import BudgetExceedsDataset, DatasetFieldMissing, DatasetNotFound, SplitNotHeldOut
from lensllm.trial.spec import DatasetSpec


@pytest.fixture
def task_spec(task_dir) -> DatasetSpec:
    return DatasetSpec(
        source=str(task_dir),
        input_field="input",
        target_field="target",
        prompt_template="translate : {input} =>",
        max_test_examples=50,
    )


@pytest.fixture
def words(language) -> tuple[list[str], list[str]]:
    """Two source words and two target words of the task's language."""
    return language.source_words[:2], language.target_words[:2]


def scored_tokens(tokenizer, example) -> list[str]:
    return tokenizer.convert_ids_to_tokens([t for t in example.labels if t != IGNORE])


def test_subsets_are_nested_prefixes_of_one_seeded_order(task_spec, task_dir):
    small = load_task_rows(task_spec, need_train=64, seed=0)
    large = load_task_rows(task_spec, need_train=512, seed=0)
    other_seed = load_task_rows(task_spec, need_train=64, seed=1)
    file_head = [json.loads(line)["target"] for line in (task_dir / "train.jsonl").read_text().splitlines()[:64]]
    assert large.train[:64] == small.train
    assert [r.scored for r in small.train] != file_head
    assert other_seed.train != small.train
    assert large.test == small.test and len(small.test) == 50  # the budget never changes the test sample


def test_causal_example_scores_the_target_and_eos_only(tokenizer, words):
    (s1, s2), (t1, t2) = words
    [example] = encode_rows(
        tokenizer, [Row(prompt=f"translate : {s1} {s2} =>", scored=f"{t1} {t2}")], max_length=32, seq2seq=False
    )
    assert tokenizer.convert_ids_to_tokens(example.input_ids) == [
        "[BOS]",
        "translate",
        ":",
        s1,
        s2,
        "=>",
        t1,
        t2,
        "[EOS]",
    ]
    assert example.labels[:6] == [IGNORE] * 6
    assert scored_tokens(tokenizer, example) == [t1, t2, "[EOS]"]
    assert example.n_bytes == len(f"{t1} {t2}") and example.n_tokens == 9


def test_text_example_scores_every_token_after_the_start_token(tokenizer, words):
    _, (t1, t2) = words
    [example] = encode_rows(tokenizer, [Row(prompt=None, scored=f"{t1} {t2} {t1}")], max_length=32, seq2seq=False)
    assert tokenizer.convert_ids_to_tokens(example.input_ids) == ["[BOS]", t1, t2, t1]
    assert scored_tokens(tokenizer, example) == [t1, t2, t1]


def test_seq2seq_example_puts_the_prompt_on_the_encoder_and_the_target_in_the_labels(tokenizer, words):
    (s1, _), (t1, _) = words
    [example] = encode_rows(tokenizer, [Row(prompt=f"translate : {s1} =>", scored=t1)], max_length=32, seq2seq=True)
    assert tokenizer.convert_ids_to_tokens(example.input_ids) == ["translate", ":", s1, "=>"]
    assert tokenizer.convert_ids_to_tokens(example.labels) == [t1, "[EOS]"]


def test_too_long_example_keeps_the_target_head_and_the_prompt_end(tokenizer, words):
    (s1, s2), (t1, t2) = words
    row = Row(prompt=f"translate : {s1} {s2} {s1} {s2} =>", scored=f"{t1} {t2} {t1} {t2} {t1} {t2}")
    [short_prompt] = encode_rows(tokenizer, [row], max_length=8, seq2seq=False)
    assert tokenizer.convert_ids_to_tokens(short_prompt.input_ids) == ["=>", t1, t2, t1, t2, t1, t2, "[EOS]"]
    [short_target] = encode_rows(tokenizer, [row], max_length=4, seq2seq=False)
    assert tokenizer.convert_ids_to_tokens(short_target.input_ids) == ["=>", t1, t2, t1]
    assert short_target.n_bytes == len(f"{t1} {t2} {t1}")  # only the scored text that survived counts
    [seq2seq] = encode_rows(tokenizer, [row], max_length=4, seq2seq=True)
    assert tokenizer.convert_ids_to_tokens(seq2seq.input_ids) == [s2, s1, s2, "=>"]
    assert tokenizer.convert_ids_to_tokens(seq2seq.labels) == [t1, t2, t1, t2]


def test_collate_right_pads_inputs_and_masks_padding_out_of_the_loss(tokenizer, words):
    (s1, s2), (t1, t2) = words
    rows = [Row(prompt=f"translate : {s1} =>", scored=t1), Row(prompt=f"translate : {s1} {s2} =>", scored=f"{t1} {t2}")]
    batch = collate(
        encode_rows(tokenizer, rows, max_length=32, seq2seq=False),
        pad_id=tokenizer.pad_token_id,
        seq2seq=False,
        device=torch.device("cpu"),
    )
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"].sum(1).tolist() == [7, 9]
    assert batch["input_ids"][0, 7:].tolist() == [tokenizer.pad_token_id] * 2
    assert batch["labels"][0, 7:].tolist() == [IGNORE] * 2


def test_single_file_source_splits_by_slices(tmp_path, task_dir):
    lines = (task_dir / "train.jsonl").read_text().splitlines()[:100]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    spec = DatasetSpec(
        source=str(tmp_path / "pairs.jsonl"),
        input_field="input",
        target_field="target",
        train_split="train[:80%]",
        test_split="train[80%:]",
    )
    rows = load_task_rows(spec, need_train=80, seed=0)
    repeated = sum(line in lines[:80] for line in lines[80:])  # short made-up sentences do repeat
    assert (rows.train_split_size, rows.test_rows_in_train, len(rows.test)) == (80, repeated, 20 - repeated)


def test_text_file_source_reads_one_example_per_line(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"line {i}\n" for i in range(30)))
    (tmp_path / "test.txt").write_text("held out\n")
    rows = load_task_rows(DatasetSpec(source=str(tmp_path), text_field="text"), need_train=30, seed=0)
    assert sorted(r.scored for r in rows.train) == sorted(f"line {i}" for i in range(30))
    assert rows.test == [Row(prompt=None, scored="held out")]


@pytest.mark.parametrize(
    ("changes", "need", "error", "message"),
    [
        (
            {"source": "/nonexistent/pairs.jsonl"},
            10,
            DatasetNotFound,
            "dataset.source '/nonexistent/pairs.jsonl': no such file or directory",
        ),
        ({"test_split": "validation"}, 10, DatasetNotFound, "dataset.testSplit 'validation'"),
        (
            {"target_field": "answer"},
            10,
            DatasetFieldMissing,
            "dataset.targetField 'answer' is not a column of split 'train' (columns: input, target)",
        ),
        ({}, 1201, BudgetExceedsDataset, "need 1201 training examples, split 'train' has 1200"),
    ],
)
def test_dataset_problems_are_classified(task_spec, changes, need, error, message):
    with pytest.raises(error) as caught:
        load_task_rows(task_spec.model_copy(update=changes), need_train=need, seed=0)
    assert message in str(caught.value)


def test_unparsable_data_file_is_dataset_not_found(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"input": "a", "target": "b"}\nnot json at all\n')
    spec = DatasetSpec(source=str(tmp_path / "pairs.jsonl"), input_field="input", target_field="target")
    with pytest.raises(DatasetNotFound, match=r"pairs.jsonl': JSON parse error: .* in row 1$"):  # the parser's reason
        load_task_rows(spec, need_train=1, seed=0)


def test_an_empty_data_file_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.jsonl").write_text('{"input": "a", "target": "b"}\n')
    spec = DatasetSpec(source=str(tmp_path), input_field="input", target_field="target")
    with pytest.raises(DatasetNotFound) as caught:
        load_task_rows(spec, need_train=1, seed=0)
    assert str(caught.value) == f"dataset.source {str(tmp_path)!r}: train.jsonl has no record"



def pairs_folder(tmp_path, train: list[dict], test: list[dict]) -> DatasetSpec:
    """A dataset folder of input/target pairs: train.jsonl and test.jsonl."""
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    return DatasetSpec(source=str(tmp_path), input_field="input", target_field="target")


def numbered(n: int, start: int = 0, **fields: object) -> list[dict]:
    return [{"input": str(i), "target": str(i), **fields} for i in range(start, start + n)]


@pytest.mark.parametrize(("last", "field", "says"), [
    ({"input": "a"}, "targetField 'target'", "has no value (null or missing)"),
    ({"input": "a", "target": None}, "targetField 'target'", "has no value (null or missing)"),
])
def test_a_row_without_a_value_is_refused_naming_field_row_and_split(tmp_path, last, field, says):
    spec = pairs_folder(tmp_path, numbered(5), numbered(4, start=10) + [last])
    with pytest.raises(DatasetFieldMissing) as caught:
        load_task_rows(spec, need_train=5, seed=0)  # written out, it would be trained on as the text "None"
    assert str(caught.value) == f"dataset.{field}: row 4 (from 0) of split 'test' {says}"


def test_a_nested_value_is_refused_and_numbers_are_written_out(tmp_path):
    nested = [{"input": {"words": [str(i)]}, "target": str(i)} for i in range(3)]
    spec = pairs_folder(tmp_path, nested, nested)
    with pytest.raises(DatasetFieldMissing, match=r"^dataset.inputField 'input': row \d \(from 0\) of split 'test' "
                                                  r"has a dict, not text$"):
        load_task_rows(spec, need_train=3, seed=0)
    numbers = [{"input": i, "target": i * 2} for i in range(4)]
    rows = load_task_rows(pairs_folder(tmp_path, numbers[:3], numbers[2:]), need_train=3, seed=0)
    assert sorted(r.scored for r in rows.train) == ["0", "2", "4"]
    assert (rows.test_rows_in_train, rows.test) == (1, [Row(prompt="3\n", scored="6")])  # compared as numbers written out


def test_a_test_sample_with_nothing_to_score_is_refused(tmp_path):
    spec = pairs_folder(tmp_path, numbered(3), numbered(3, start=10, target=""))
    with pytest.raises(DatasetFieldMissing) as caught:
        load_task_rows(spec, need_train=3, seed=0)  # bits per byte over zero bytes
    assert str(caught.value) == ("dataset.targetField 'target': all 3 test rows drawn from split 'test' are empty: "
                                 "there is no text to score")


def test_overlapping_slices_of_one_split_leave_the_shared_rows_out_of_the_test_sample(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", numbered(100))
    spec = DatasetSpec(source=str(tmp_path / "pairs.jsonl"), input_field="input", target_field="target",
                       train_split="train[:90%]", test_split="train[80%:]", max_test_examples=50)
    rows = load_task_rows(spec, need_train=8, seed=0)
    assert rows.test_rows_in_train == 10
    assert sorted(int(r.scored) for r in rows.test) == list(range(90, 100))  # only what training never sees


@pytest.mark.parametrize("slice_rows", [data.TRAIN_SLICE_ROWS, 7])  # 7: the copies sit in slices 2 and 22 of 29
def test_test_rows_duplicated_in_the_training_split_are_replaced_by_held_out_ones(tmp_path, monkeypatch, slice_rows):
    monkeypatch.setattr(data, "TRAIN_SLICE_ROWS", slice_rows)
    train = numbered(200)
    copied = [train[7], train[150], {"input": "7", "target": "seven"}]  # the last shares only its input
    spec = pairs_folder(tmp_path, train, numbered(60, start=1000) + copied).model_copy(update={"max_test_examples": 40})
    rows = load_task_rows(spec, need_train=16, seed=0)
    assert rows.test_rows_in_train == 2
    assert len(rows.test) == 40 and {"7", "150"}.isdisjoint(r.scored for r in rows.test)
    (tmp_path / "clean").mkdir()
    clean = load_task_rows(pairs_folder(tmp_path / "clean", numbered(200), numbered(60, start=1000)).model_copy(
        update={"max_test_examples": 40}), need_train=16, seed=0)
    assert clean.test_rows_in_train == 0 and len(set(rows.test) & set(clean.test)) >= 30  # the rest of the draw stays


@pytest.mark.parametrize("slice_rows", [data.TRAIN_SLICE_ROWS, 1])
def test_test_rows_that_differ_from_training_rows_only_in_spacing_are_left_out(tmp_path, monkeypatch, slice_rows):
    monkeypatch.setattr(data, "TRAIN_SLICE_ROWS", slice_rows)
    train = [{"input": "the  cat\n", "target": "die Katze"}, {"input": "a dog", "target": "ein Hund"}]
    test = [{"input": " the cat", "target": "die\u00a0Katze\r\n"},  # the same pair, spaced otherwise
            {"input": "A dog", "target": "ein Hund"},  # case can be the task: kept
            {"input": "the cat", "target": "die Katzen"}]
    rows = load_task_rows(pairs_folder(tmp_path, train, test), need_train=2, seed=0)
    assert rows.test_rows_in_train == 1
    assert sorted(r.scored for r in rows.test) == ["die Katzen", "ein Hund"]


def test_a_test_split_that_copies_the_training_split_is_refused(tmp_path):
    spec = pairs_folder(tmp_path, numbered(30), numbered(30)[::-1])
    with pytest.raises(SplitNotHeldOut) as caught:
        load_task_rows(spec, need_train=8, seed=0)
    assert str(caught.value) == ("all 30 rows of dataset.testSplit 'test' are rows of dataset.trainSplit 'train' too: "
                                 "the test loss would measure memorising; give a held-out split")


def test_language_modelling_text_is_compared_whole(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"line {i}\n" for i in range(30)))
    (tmp_path / "test.txt").write_text("line 3\nline 3 and more\n")
    rows = load_task_rows(DatasetSpec(source=str(tmp_path), text_field="text"), need_train=4, seed=0)
    assert (rows.test_rows_in_train, rows.test) == (1, [Row(prompt=None, scored="line 3 and more")])


def test_the_demo_task_holds_out_every_test_row(demo_world):
    """The Quickstart's data: its one-word rows repeat, so its test rows are drawn apart from the training rows."""
    train = set((demo_world / "data" / "train.jsonl").read_text().splitlines())
    test = (demo_world / "data" / "test.jsonl").read_text().splitlines()
    assert len(test) == 64 and not train.intersection(test)
