import json

import nbformat
import pytest

from causal_nb.notebook.runner import RunError, notebook_parameters, parse_value, run_series


def make_nb(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params_src)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), p, nbformat.v4.new_code_cell(body_src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def series_dir(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    make_nb(d / "01_first.ipynb", 'SEED = 0  # seed\nOUT_DIR = "runs/x"  # out',
            'import pathlib\npathlib.Path(OUT_DIR, "first.txt").write_text(str(SEED))')
    make_nb(d / "02_second.ipynb", 'OUT_DIR = "runs/x"  # out\nFAIL: bool = False  # fail on purpose',
            'import pathlib\nif FAIL:\n    raise ValueError("asked to fail")\npathlib.Path(OUT_DIR, "second.txt").write_text("ok")')
    return d


def test_parameters_cell_is_read(series_dir):
    assert notebook_parameters(series_dir / "02_second.ipynb") == {"OUT_DIR": "runs/x", "FAIL": False}
    assert parse_value("16") == 16 and parse_value("True") is True and parse_value("code-llama-4l") == "code-llama-4l"


@pytest.mark.slow
def test_series_runs_in_order_and_resumes(series_dir, tmp_path):
    out = tmp_path / "run"
    run = run_series("demo", {"SEED": 7}, out, notebooks_dir=series_dir, progress=False)
    assert (run / "first.txt").read_text() == "7" and (run / "second.txt").read_text() == "ok"
    assert [n["notebook"] for n in json.loads((run / "run.json").read_text())["notebooks"]] == ["01_first.ipynb", "02_second.ipynb"]
    report = (run / "report.md").read_text()
    assert "01_first.ipynb" in report and "02_second.ipynb" in report and (run / "report.html").exists()
    (run / "first.txt").unlink()
    run_series("demo", {"SEED": 7}, out, resume=True, notebooks_dir=series_dir, progress=False)
    assert not (run / "first.txt").exists()  # finished notebooks are not rerun


@pytest.mark.slow
def test_failing_notebook_stops_with_cell_and_keeps_partial_outputs(series_dir, tmp_path):
    with pytest.raises(RunError, match=r"02_second.ipynb failed in cell .*ValueError: asked to fail"):
        run_series("demo", {"FAIL": True}, tmp_path / "run", notebooks_dir=series_dir, progress=False)
    assert (tmp_path / "run" / "first.txt").exists() and (tmp_path / "run" / "02_second.ipynb").exists()


def test_unknown_parameter_and_profile(series_dir, tmp_path):
    with pytest.raises(RunError, match=r"\['MODLE'\] not declared by any notebook"):
        run_series("demo", {"MODLE": "x"}, tmp_path, notebooks_dir=series_dir)
    with pytest.raises(RunError, match="unknown profile 'quick'"):
        run_series("quick", notebooks_dir=series_dir)
    with pytest.raises(RunError, match="--resume needs the run folder"):
        run_series("demo", resume=True, notebooks_dir=series_dir)


def test_report_lists_notebooks_tables_and_figures(tmp_path):
    import json

    from causal_nb.notebook.runner import write_report

    (tmp_path / "run.json").write_text(json.dumps({"profile": "demo", "notebooks": [
        {"notebook": "00_a.ipynb", "seconds": 1.5, "parameters": {"SEED": 0}}]}))
    (tmp_path / "00_summary.json").write_text(json.dumps([{"domain": "python", "loss": 3.123456}]))
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "curve.html").write_text("<html></html>")
    (tmp_path / "graphs" / "curve.png").write_bytes(b"\x89PNG")
    (tmp_path / "graphs" / "only_html.html").write_text("<html></html>")
    md, html = write_report(tmp_path)
    text = md.read_text()
    assert "00_a.ipynb" in text and "3.1235" in text
    assert "![curve](graphs/curve.png)" in text and "[only_html](graphs/only_html.html)" in text
    assert "only_html.png" not in text
    assert "<iframe src='graphs/curve.html'" in html.read_text()


def test_typos_are_refused_with_the_nearest_name(series_dir, tmp_path):
    with pytest.raises(RunError, match=r"\['SEDE'\] not declared.*did you mean 'SEED'"):
        run_series("demo", {"SEDE": 1}, tmp_path / "r", notebooks_dir=series_dir)
    # FAIL is declared by 02 only: fine for the series, refused when only 01 runs
    with pytest.raises(RunError, match=r"\['FAIL'\] not declared by any notebook run \(01_first.ipynb\)"):
        run_series("demo", {"FAIL": True}, tmp_path / "r", only=["01"], notebooks_dir=series_dir)
    with pytest.raises(RunError, match="unknown profile 'dmeo' .did you mean 'demo'"):
        run_series("dmeo", notebooks_dir=series_dir)


@pytest.mark.slow
def test_resume_reports_every_notebook_checks_parameters_and_writes_atomically(series_dir, tmp_path, monkeypatch):
    import causal_nb.core.io

    replaced = []
    real = causal_nb.core.io.os.replace
    monkeypatch.setattr(causal_nb.core.io.os, "replace", lambda a, b: (replaced.append(b), real(a, b)))
    out = tmp_path / "run"
    run_series("demo", {"SEED": 7}, out, only=["01"], notebooks_dir=series_dir, progress=False)
    assert str(out / ".done" / "01_first") in map(str, replaced) and str(out / "run.json") in map(str, replaced)
    with pytest.raises(RunError, match=r"other parameters \(SEED: 7 -> 8\).*--force"):
        run_series("demo", {"SEED": 8}, out, resume=True, notebooks_dir=series_dir, progress=False)
    with pytest.raises(RunError, match=r"profile: 'demo' -> 'full'"):
        run_series("full", {"SEED": 7}, out, resume=True, notebooks_dir=series_dir, progress=False)
    assert not (out / "second.txt").exists()  # refused before anything ran
    run_series("demo", {"SEED": 7}, out, resume=True, notebooks_dir=series_dir, progress=False)
    meta = json.loads((out / "run.json").read_text())
    assert [n["notebook"] for n in meta["notebooks"]] == ["01_first.ipynb", "02_second.ipynb"]
    assert meta["notebooks"][0]["parameters"]["SEED"] == 7
    report = (out / "report.md").read_text()
    assert "01_first.ipynb" in report and "02_second.ipynb" in report
    (out / ".done" / "02_second").unlink()
    run_series("demo", {"SEED": 8}, out, resume=True, force=True, notebooks_dir=series_dir, progress=False)
    meta = json.loads((out / "run.json").read_text())
    assert [n["parameters"].get("SEED") for n in meta["notebooks"]] == [7, None]  # 02 declares no SEED
    assert meta["parameters"]["SEED"] == 8


def test_command_line_takes_the_notebooks_folder(series_dir, tmp_path, capsys):
    from causal_nb.__main__ import main

    assert main(["run", "--notebooks", str(series_dir), "--out", str(tmp_path / "r"), "-p", "SEDE", "1"]) == 1
    assert "did you mean 'SEED'" in capsys.readouterr().err
