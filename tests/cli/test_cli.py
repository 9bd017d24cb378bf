import csv
import io
import json
import subprocess
import sys
import warnings

import pytest

from lensllm.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMALL = """model,0,100,200,400,800,1600,3200,size,family
steep,14.1,10.8324,9.8776,8.7890,7.6402,6.5015,5.4252,1e8,A
flat,4.0,3.1228,3.0148,2.9026,2.7962,2.7016,2.6172,1e9,B
worst,8.5,7.0797,6.8714,6.6376,6.3978,6.1633,5.9295,5e8,A
"""


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text(SMALL)
    return path


def run_cli(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_csv_has_the_contract_header_and_one_row_per_method_and_ratio(curves_dir, capsys):
    code, out, _ = run_cli(["bench", curves_dir / "flan.csv", "--methods", "ats,zeroshot", "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert list(rows[0]) == ["method", "ratio", "max_n", "target_n", "pearcorr", "relacc", "selected"]
    assert [(r["method"], r["ratio"]) for r in rows][:2] == [("ats", "8"), ("ats", "16")]
    assert len(rows) == 14
    ats_8 = rows[0]
    assert ats_8["max_n"] == "204800" and ats_8["target_n"] == "1638400"
    assert float(ats_8["pearcorr"]) == pytest.approx(0.909, abs=5e-4)  # a fraction, not a percentage


def test_bench_json_markdown_and_plot(curves_dir, capsys, tmp_path):
    plot = tmp_path / "bench.png"
    code, out, _ = run_cli(
        ["bench", curves_dir / "gigaword.csv", "--methods", "all", "--ratios", "8,64", "--format", "json", "--plot", plot],
        capsys,
    )
    doc = json.loads(out)
    assert code == 0
    assert {r["method"] for r in doc["rows"]} == {
        "zeroshot", "subtuning", "modelsize", "vanilla", "rectified", "ats", "lensllm", "default"
    }
    assert set(doc["means"]["ats"]) == {"pearcorr", "relacc"}
    assert plot.read_bytes().startswith(PNG_MAGIC)
    code, out, _ = run_cli(["bench", curves_dir / "gigaword.csv", "--methods", "ats", "--format", "markdown"], capsys)
    assert code == 0 and "| ats | 98.9 | 97.6 |" in out


def test_bench_with_equal_true_losses_writes_null_not_nan_and_no_warning(tmp_path, capsys):
    """PearCorr is undefined when every model reaches the same loss: JSON says null, tables say n/a."""
    path = tmp_path / "equal.csv"
    path.write_text("model,0,100,200,400,800\na,4,3.5,3.2,3.0,2.5\nb,5,4.0,3.4,3.1,2.5\nc,6,4.5,3.6,3.2,2.5\n")
    args = ["bench", path, "--ratios", "2", "--methods", "ats,zeroshot"]

    def not_json(constant: str):
        raise ValueError(f"{constant} is not JSON")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" must not reach the user
        code, out, err = run_cli([*args, "--format", "json"], capsys)
        doc = json.loads(out, parse_constant=not_json)
        assert (code, err) == (0, "")
        assert doc["means"]["ats"] == {"pearcorr": None, "relacc": 1.0} and doc["rows"][0]["pearcorr"] is None
        code, out, _ = run_cli(args, capsys)
    assert code == 0 and "│ ats      │ n/a │  n/a │" in out


@pytest.mark.parametrize("strategy", ["fixed", "race"])
def test_bench_on_one_model_is_refused_naming_the_file(strategy, tmp_path, capsys):
    path = tmp_path / "one.csv"
    path.write_text("model,0,100,200,400,800,size\nalone,4,3.5,3.2,3.0,2.9,1e6\n")
    code, out, err = run_cli(["bench", path, "--strategy", strategy], capsys)
    assert (code, out) == (2, "")
    assert err == f"lensllm bench: error: {path}: 1 model (alone); scoring a selection needs at least two\n"


def test_bench_table_shows_means_per_method(small_csv, capsys):
    code, out, _ = run_cli(["bench", small_csv, "--target", "3200", "--ratios", "2", "--methods", "subtuning"], capsys)
    assert code == 0 and "PearCorr" in out and "RelAcc" in out and "subtuning" in out


def test_fit_refuses_a_target_below_the_largest_size_it_fits(small_csv, capsys):
    code, out, err = run_cli(["fit", small_csv, "--max-n", "800", "--target", "100"], capsys)
    assert (code, out) == (2, "")
    assert err == "lensllm fit: error: --target 100 is below 800, the largest size fitted (--max-n)\n"


def test_fit_reads_stdin_and_writes_csv_in_input_order(capsys, monkeypatch):
    code, out, _ = run_cli(
        ["fit", "-", "--max-n", "1600", "--target", "1000000", "--method", "rectified", "--format", "csv"],
        capsys,
        stdin=SMALL,
        monkeypatch=monkeypatch,
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert list(rows[0]) == ["model", "predicted_loss", "rank"]
    assert [r["model"] for r in rows] == ["steep", "flat", "worst"]
    assert [r["rank"] for r in rows] == ["1", "2", "3"]


def test_fit_json_carries_parameters_and_plot_is_drawn(small_csv, capsys, tmp_path):
    plot = tmp_path / "fit.png"
    code, out, _ = run_cli(["fit", small_csv, "--max-n", "3200", "--format", "json", "--plot", plot], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["method"] == "default" and doc["target_n"] == 3200
    assert {"B", "beta", "E"} <= set(doc["models"][0]["params"])
    assert plot.read_bytes().startswith(PNG_MAGIC)


BAD_TABLES = {
    "empty": ("", "file is empty"),
    "no model column": ("0,200,400,800\n4,3,2,1\n", "first column must name the model"),
    "non-numeric loss": ("m,0,200,400,800\na,4,3,x,2\n", "row 2 (a), column '400': 'x' is not a number"),
    "negative loss": ("m,0,200,400,800\na,4,3,-2,2\n", "row 2 (a), column '400': -2 must be positive"),
    "nan loss": ("m,0,200,400,800\na,4,nan,2,1\n", "row 2 (a), column '200': 'nan' is not finite"),
    "inf loss": ("m,0,200,400,800\na,4,3,inf,1\n", "row 2 (a), column '400': 'inf' is not finite"),
    "duplicate model": ("m,0,200,400,800\na,4,3,2,1\nb,4,3,2,1\na,5,3,2,1\n", "model 'a' appears in rows 2 and 4"),
    "sizes not increasing": ("m,0,400,200,800\na,4,3,2,1\n", "size columns must increase left to right, but 200 follows 400"),
    "unknown column": ("m,0,200,params\na,4,3,2\n", "column 'params' is neither a subset size"),
    "missing value": ("m,0,200,400,800\na,4,3,2\n", "row 2 (a) has no value in column '800'"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_exit_2_with_one_line_naming_the_problem(case, tmp_path, capsys):
    text, expected = BAD_TABLES[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, out, err = run_cli(["fit", path, "--max-n", "200"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(path) in err and expected in err, err


def test_missing_file_exits_2_naming_it(tmp_path, capsys):
    code, _, err = run_cli(["bench", tmp_path / "nope.csv"], capsys)
    assert code == 2 and "nope.csv: no such file" in err and err.count("\n") == 1


def test_max_n_that_is_not_a_column_exits_2(small_csv, capsys):
    code, _, err = run_cli(["fit", small_csv, "--max-n", "300"], capsys)
    assert code == 2 and "--max-n 300 is not a size column" in err and "100, 200, 400" in err


def test_too_few_points_within_the_budget_for_a_law_exits_2_naming_the_model(small_csv, capsys):
    code, _, err = run_cli(["fit", small_csv, "--max-n", "200", "--method", "vanilla"], capsys)
    assert code == 2 and "model 'steep'" in err and "at least 3" in err and err.count("\n") == 1


def test_unknown_method_is_a_usage_error(small_csv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(small_csv), "--max-n", "200", "--method", "magic"])
    assert exc.value.code == 2 and "unknown method 'magic'" in capsys.readouterr().err


def test_the_console_script_reports_bad_input_without_a_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("m,0,200\na,4,oops\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lensllm.cli.main", "fit", str(path), "--max-n", "200"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'oops' is not a number" in proc.stderr


def test_the_command_line_starts_without_importing_torch_or_kopf():
    """The operator image has no torch and `lensllm bench` needs neither: heavy imports wait for their subcommand."""
    code = "import sys, lensllm.cli.main; print(sorted({'torch', 'transformers', 'kopf'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("where", ["/proc/lensllm.png", "a-folder.png"])
def test_a_plot_that_cannot_be_written_is_refused_before_any_work(small_csv, capsys, tmp_path, where):
    plot = tmp_path / where if not where.startswith("/") else where
    if where == "a-folder.png":
        plot.mkdir()
    code, out, err = run_cli(["fit", small_csv, "--max-n", "3200", "--plot", plot], capsys)
    assert code == 2 and out == ""
    assert err.strip().startswith(f"lensllm fit: error: --plot {plot}: ")


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(small_csv, capsys, monkeypatch):
    from lensllm.cli import bench

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    assert main(["bench", str(small_csv)]) == 130
    assert capsys.readouterr().err == "lensllm bench: interrupted\n"
