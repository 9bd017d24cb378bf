"""`lensllm bench` on a LensBench table: a curves CSV with its NTK spectra and ground truth beside it."""

import csv
import io
import json

import pytest

from lensllm.cli.main import main
from lensllm.curves_io import NTK_FORMAT, read_curves

SIZES = [8, 16, 32, 64, 128, 256, 512, 4096]
# Rectified-law curves (B, D_l, beta, E) whose pre-learned data size D_l is far above what their NTK allows.
LAWS = {"a": (60.0, 300.0, 0.55, 1.0), "b": (40.0, 150.0, 0.5, 1.1), "c": (90.0, 500.0, 0.6, 0.9), "d": (20.0, 50.0, 0.45, 1.3)}


def _loss(law, n):
    B, D_l, beta, E = law
    return B / (D_l + n**beta) + E


def _ntk(scale):
    return {"n": 3, "eta": 0.001, "scope": "all", "parameters": 1000, "residualNormSq": 9.0 * scale,
            "eigenvalues": [10.0, 1.0, 0.1], "projectionsSq": [5.0 * scale, 3.0 * scale, 1.0 * scale]}


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "task.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "0", *SIZES, "size", "family"])
        for i, (name, law) in enumerate(LAWS.items()):
            writer.writerow([name, _loss(law, 0), *(_loss(law, n) for n in SIZES), 1000 * (i + 1), "gpt2"])
    ntk = {"format": NTK_FORMAT, "target": 4096, "metric": "bitsPerByte", "models": {m: _ntk(i + 1) for i, m in enumerate(LAWS)}}
    path.with_name("task.ntk.json").write_text(json.dumps(ntk))
    return path


def bench_csv(path, capsys, *extra):
    code = main(["bench", str(path), "--format", "csv", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return list(csv.DictReader(io.StringIO(out)))


def test_the_reader_attaches_the_ntk_spectra_and_the_ground_truth_size(table):
    curves = read_curves(table)
    assert curves.target_size == 4096
    assert [s.initial for s in curves.ntk] == pytest.approx([9.0, 18.0, 27.0, 36.0])
    assert curves.up_to(512).ntk == curves.ntk and curves.up_to(512).target_size is None


def test_bench_targets_the_ground_truth_and_keeps_the_ratios_that_leave_three_sizes(table, capsys):
    rows = bench_csv(table, capsys, "--methods", "ats")
    assert {r["target_n"] for r in rows} == {"4096"}
    assert [(r["ratio"], r["max_n"]) for r in rows] == [("8", "512"), ("16", "256"), ("32", "128"), ("64", "64"), ("128", "32")]


def extrapolation_errors(path, capsys) -> dict[str, float]:
    code = main(["bench", str(path), "--methods", "rectified,lensllm", "--ratios", "8", "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return {r["method"]: r["extrapolation_error"] for r in json.loads(out)["rows"]}


def test_lensllm_uses_the_measured_ntk_and_equals_rectified_without_it(table, capsys):
    errors = extrapolation_errors(table, capsys)
    assert errors["rectified"] < 1e-3  # the exact law is recovered when F is free
    # The true D_l lies outside the NTK's interval for F, so the constrained law extrapolates differently.
    assert errors["lensllm"] > 10 * errors["rectified"]
    table.with_name("task.ntk.json").unlink()
    plain = extrapolation_errors(table, capsys)
    assert plain["lensllm"] == pytest.approx(plain["rectified"], rel=1e-9)


BAD_NTK = {
    "not json": ("{", "not JSON"),
    "wrong format": ({"format": "other", "target": 4096, "models": {}}, "field 'format' must be 'lensbench-ntk/1'"),
    "bad target": ({"format": NTK_FORMAT, "target": "big", "models": {}}, "field 'target' must be a positive integer"),
    "target not a column": ({"format": NTK_FORMAT, "target": 1000, "models": {m: _ntk(1) for m in LAWS}}, "target size 1000 is not one of the sizes"),
    "model missing": ({"format": NTK_FORMAT, "target": 4096, "models": {"a": _ntk(1)}}, "no NTK summary for model 'b'"),
    "field missing": ({"format": NTK_FORMAT, "target": 4096, "models": {m: {"eta": 1.0} for m in LAWS}}, "model 'a': NTK summary needs eigenvalues"),
}


@pytest.mark.parametrize("case", list(BAD_NTK))
def test_a_bad_ntk_file_exits_2_with_one_line_naming_it(case, table, capsys):
    content, expected = BAD_NTK[case]
    ntk_path = table.with_name("task.ntk.json")
    ntk_path.write_text(content if isinstance(content, str) else json.dumps(content))
    code = main(["bench", str(table), "--methods", "ats"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert str(ntk_path) in err and expected in err, err


def test_a_table_too_short_for_any_ratio_exits_2(tmp_path, capsys):
    path = tmp_path / "short.csv"
    path.write_text("model,0,8,16,4096\na,3,2.9,2.8,2\nb,3,2.8,2.7,2.1\n")
    code = main(["bench", str(path)])
    assert code == 2 and "no budget ratio" in capsys.readouterr().err
