"""`lensllm lensbench` refuses bad input with one line and exit code 2."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lensllm.cli.main import main
from lensllm.errors import LensLLMError

DATA = Path(__file__).resolve().parents[2] / "data"


def lensllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lensllm.cli.main", *args], capture_output=True, text=True, check=False)


def test_an_unknown_task_exits_2_with_one_line(tmp_path):
    proc = lensllm("lensbench", "generate", "--out", str(tmp_path), "--tasks", "klingon")
    assert proc.returncode == 2 and "'klingon' is neither a built-in task" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_e2e_without_a_generation_exits_2(tmp_path):
    proc = lensllm("lensbench", "e2e", "--out", str(tmp_path))
    assert proc.returncode == 2 and "no generation.json" in proc.stderr


def test_without_the_benchmark_sources_it_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lensllm_bench" else real(name, *a))
    assert main(["lensbench", "generate", "--out", str(tmp_path)]) == 2
    assert "needs the lensbench/ sources" in capsys.readouterr().err


def test_the_ntk_answer_refuses_tables_without_an_ntk(curves_dir, capsys):
    assert main(["lensbench", "ntk", str(curves_dir / "flan.csv")]) == 2
    assert "no NTK spectra for flan" in capsys.readouterr().err


def test_the_ntk_signal_needs_two_tasks_to_leave_one_out(capsys):
    data = Path(__file__).resolve().parents[2] / "data"
    one_task = [str(data / draw / "cipher.csv") for draw in ("lensbench", "lensbench-seed1")]
    assert main(["lensbench", "ntk-signal", *one_task]) == 2
    assert "at least two tasks" in capsys.readouterr().err



def test_a_corrupt_generation_record_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "generation.json").write_text('{"tasks": ["cipher"]')
    assert main(["lensbench", "e2e", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'generation.json'}: not a generation record" in capsys.readouterr().err


def test_leave_one_task_out_needs_two_tasks_and_seeds_are_not_negative(capsys):
    data = Path(__file__).resolve().parents[2] / "data"
    assert main(["lensbench", "loo", *(str(data / draw / "cipher.csv") for draw in ("lensbench", "lensbench-seed1"))]) == 2
    assert "give tables of at least two tasks" in capsys.readouterr().err
    proc = lensllm("lensbench", "ntk", str(data / "lensbench" / "cipher.csv"), "--seed", "-1")
    assert proc.returncode == 2 and "--seed: expected an integer >= 0, got '-1'" in proc.stderr


def test_generate_refuses_an_output_folder_it_cannot_make(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert main(["lensbench", "generate", "--out", str(taken), "--quick"]) == 2
    assert f"--out {taken}: is a file; give a folder" in capsys.readouterr().err


def test_ceiling_and_loo_name_the_table_that_is_bad_among_several(curves_dir, tmp_path, capsys):
    short = tmp_path / "short.csv"
    short.write_text("model,0,100,200\na,3,2,1\nb,4,3,2\n")
    assert main(["lensbench", "loo", str(curves_dir / "flan.csv"), str(curves_dir / "wmt19.csv"), str(short)]) == 2
    assert capsys.readouterr().err.startswith(f"lensllm lensbench: error: {short}: no budget ratio among")
    few = tmp_path / "few.csv"  # scored by ratio, but three models cannot bound the ceiling's fit
    few.write_text(SMALL_TABLE)
    assert main(["lensbench", "ceiling", str(few), str(curves_dir / "flan.csv")]) == 2
    assert capsys.readouterr().err == f"lensllm lensbench: error: {few}: 3 models cannot bound a fit of 3 statistics\n"


SMALL_TABLE = """model,0,100,200,400,800,1600,3200
steep,14.1,10.8324,9.8776,8.7890,7.6402,6.5015,5.4252
flat,4.0,3.1228,3.0148,2.9026,2.7962,2.7016,2.6172
worst,8.5,7.0797,6.8714,6.6376,6.3978,6.1633,5.9295
"""


def a_generation(out: Path, zoo: list[str]) -> None:
    """A generation record like the published one (data/lensbench), with its zoo's names replaced by `zoo`."""
    record = json.loads((DATA / "lensbench" / "generation.json").read_text())
    record["zoo"] = [{"name": name} for name in zoo]
    (out / "generation.json").write_text(json.dumps(record))


def test_e2e_refuses_truth_tables_of_another_zoo_before_running_anything(tmp_path, capsys):
    a_generation(tmp_path, ["gpt2-xs-code-1k", "opt-xs-none-1k"])  # --quick's zoo against the full tables
    assert main(["lensbench", "e2e", "--out", str(tmp_path), "--tables", str(DATA / "lensbench"), "--tasks", "cipher"]) == 2
    assert capsys.readouterr().err == (f"lensllm lensbench: error: {DATA / 'lensbench' / 'cipher.points.csv'}: no truth for "
                                       "gpt2-xs-code-1k at 8 and 13 more: are these tables of this generation's zoo and budget?\n")
    assert not (tmp_path / "e2e").exists()


def test_e2e_keeps_the_tasks_it_scored_when_a_later_one_fails(tmp_path, capsys, monkeypatch):
    from lensllm_bench import endtoend

    a_generation(tmp_path, ["gpt2-xs-mix-1k", "opt-s-fortunes-4k"])

    def run_task(task: str, models, *args) -> endtoend.Outcome:
        if task == "gloss":
            raise LensLLMError("gloss: the selection failed")
        return endtoend.Outcome(task, "race", models[0], 1.0, models[0], 1.0, 1.0, 0.1, 0.1, 0.0, models[0], 2)

    monkeypatch.setattr(endtoend, "run_task", run_task)
    args = ["lensbench", "e2e", "--out", str(tmp_path), "--tables", str(DATA / "lensbench"), "--tasks", "cipher,gloss"]
    assert main(args) == 2
    assert capsys.readouterr().err == "lensllm lensbench: error: gloss: the selection failed\n"
    rows = (tmp_path / "e2e" / "e2e.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("cipher,race,gpt2-xs-mix-1k,")


def test_quick_with_only_folder_tasks_is_refused_before_claiming_the_output(tmp_path, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    for split, rows in (("train", 64), ("test", 8)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"input": f"w{i}", "target": f"x{i}"}) + "\n" for i in range(rows)))
    out = tmp_path / "out"
    assert main(["lensbench", "generate", "--out", str(out), "--quick", "--tasks", str(folder)]) == 2
    assert capsys.readouterr().err == ("lensllm lensbench: error: --tasks: none gives text to pre-train the zoo on, which "
                                       "leaves only opt-xs-none-1k (untrained): add docstring or cipher, or drop --quick\n")
    assert not (out / "plan.json").exists()


def test_folder_tasks_alone_pretrain_the_full_zoo_on_the_fortunes():
    from lensllm_bench.generate import Settings, pretrainable_zoo
    from lensllm_bench.zoo import pretraining_corpora

    assert pretraining_corpora({}, None, seed=0) == {}
    corpora = pretraining_corpora({}, ["a", "b"], seed=0)
    assert corpora["fortunes"] == ["a", "b"] and sorted(corpora["mix"]) == ["a", "b"]
    settings = Settings(out=Path("out"), seed=0, tasks=("my/task",), quick=False, workers=1, debs=Path("debs"))
    assert {m.corpus for m in pretrainable_zoo(settings)} == {"fortunes", "mix", "none"}


def test_a_bad_task_is_refused_before_torch_loads_and_before_the_output_is_made(tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from lensllm.cli.main import main; "
            f"code = main(['lensbench', 'generate', '--out', {str(out)!r}, '--tasks', 'bogus']); "
            "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.stdout.split() == ["2", "False", "False"] and "'bogus' is neither a built-in task" in proc.stderr
    assert not out.exists()


def test_a_selection_that_fails_ends_e2e_with_its_exit_code_and_why(tmp_path, capsys, monkeypatch):
    from lensllm_bench import endtoend

    manifest = tmp_path / "selection.yaml"
    manifest.write_text("apiVersion: lensllm.io/v1alpha1\nkind: LLMSelection\nmetadata: {name: x}\nspec: {}\n")
    with pytest.raises(endtoend.SelectionFailed) as raised:
        endtoend.select_locally("cipher", manifest, workers=1)
    failure = raised.value
    assert failure.code == 2
    assert str(failure).startswith("cipher: `lensllm select --local` exited 2: lensllm select: error: ")
    assert str(failure).endswith(f"(all its output: {tmp_path / 'select.log'})") and "\n" not in str(failure)

    a_generation(tmp_path, ["gpt2-xs-mix-1k", "opt-s-fortunes-4k"])
    monkeypatch.setattr(endtoend, "run_task", lambda *args: (_ for _ in ()).throw(failure))
    assert main(["lensbench", "e2e", "--out", str(tmp_path), "--tables", str(DATA / "lensbench"), "--tasks", "cipher"]) == 2
    assert capsys.readouterr().err == f"lensllm lensbench: error: {failure}\n"


def test_a_failed_selection_is_explained_by_its_firstfirst_failure(tmp_path):
    from lensllm_bench.endtoend import first_failure

    status = tmp_path / "status.json"
    status.write_text(json.dumps({"phase": "Failed", "candidates": {
        "a": {"state": "Succeeded"}, "b": {"state": "Failed", "reason": "DatasetNotFound", "message": "no such file"}}}))
    assert first_failure(status) == "candidate b failed: DatasetNotFound: no such file"
    assert first_failure(tmp_path / "missing.json") is None


def test_loo_names_the_table_of_a_curve_no_law_fits(tmp_path, capsys):
    rows = (DATA / "lensbench" / "cipher.csv").read_text().splitlines()
    name, *cells = rows[2].split(",")
    rows[2] = ",".join([name, cells[0], *["1e-300"] * 7, *cells[8:]])  # its subset losses: no finite fit
    bad = tmp_path / "cipher.csv"
    bad.write_text("\n".join(rows) + "\n")
    assert main(["lensbench", "loo", str(bad), str(DATA / "lensbench" / "de-en.csv")]) == 2
    assert capsys.readouterr().err.startswith(f"lensllm lensbench: error: {bad}: model '{name}': no finite fit of ")
