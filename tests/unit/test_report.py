"""The run report: findings computed from a run folder's files, in order, folded, robust to partial runs.

The synthetic run folder's 03_hypotheses.json is made by the real producers
(``stats.h1_table``/``h2_summary``, then the notebook's own post-processing), so a change of
their column names breaks these tests; expected numbers come from numpy/scipy directly.
"""

import json
from html.parser import HTMLParser

import nbformat
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from causal_nb import stats
from causal_nb.notebook.report import FOLD_ROWS, FindingsError, save_findings, validate_findings, write_report

N = 24  # prompts per sweep cell
RNG = np.random.default_rng(0)


def make_nb(path, params_src, body_src="x = 1"):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params_src)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body_src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def score_table(unit, score):
    n = len(score)
    cols = {"layer": np.arange(n) // 4, unit: np.arange(n) % 4}
    df = pd.DataFrame({**cols, "score": score})
    df.attrs.update({"method": "x", "unit": unit})
    return df


def per_prompt():
    """Per-prompt retained quality at 80% sparsity: heads, where ablation beats random clearly
    and magnitude not at all; neurons, where ablation beats nothing."""
    base = RNG.uniform(0.4, 0.6, N)
    return {
        ("head", "ablation"): base + 0.3, ("head", "random"): base - 0.2 + RNG.normal(0, 0.01, N),
        ("head", "magnitude"): base + 0.297 + RNG.normal(0, 0.02, N),
        ("neuron", "ablation"): base, ("neuron", "random"): base + 0.1 + RNG.normal(0, 0.01, N),
    }


@pytest.fixture(scope="module")
def quality():
    return per_prompt()


def build_run(run, quality, finished=("00", "01", "02", "03", "04")):
    run.mkdir(parents=True, exist_ok=True)
    names = {"00": "00_models_and_prompts.ipynb", "01": "01_reverse_intervention.ipynb",
             "02": "02_causal_scoring.ipynb", "03": "03_pruning_sweep.ipynb", "04": "04_graphs.ipynb"}
    for k, name in names.items():
        if k in finished:
            make_nb(run / name, 'REFERENCE = "ablation"  # causal\nDOMAIN = "python"' if k == "03" else "SEED = 0")
    (run / "run.json").write_text(json.dumps({"profile": "demo", "parameters": {"SEED": 0}, "notebooks": [
        {"notebook": names[k], "seconds": 1.5, "parameters": {"SEED": 0}} for k in finished]}))
    if "00" in finished:
        (run / "00_summary.json").write_text(json.dumps({"model": "code-llama-4l", "losses": [
            {"domain": "python", "prompts": 16, "tokens": 1008, "loss": 3.4329, "unigram": 6.4985, "margin": 3.0656},
            {"domain": "cpp", "prompts": 16, "tokens": 990, "loss": 2.423, "unigram": 6.3683, "margin": 3.9453}]}))
    if "01" in finished:
        (run / "01_token_set_separation.json").write_text(json.dumps([
            {"token_set": "python__cpp (cpp tokens)", "on python": -7.533, "on cpp": -6.474},
            {"token_set": "cpp__python (python tokens)", "on python": -8.1, "on cpp": -7.9}]))  # does not separate
    if "03" in finished:
        abl = RNG.normal(size=16)
        h1 = stats.h1_table({"attribution-abs": score_table("head", abl + RNG.normal(0, 0.1, 16)),
                             "random": score_table("head", RNG.normal(size=16)),
                             "magnitude": score_table("head", abl + RNG.normal(0, 1.0, 16))},
                            score_table("head", abl)).assign(model="m-a", unit="head")
        rows = [{"model": "m-a", "unit": u, "method": m, "sparsity": s, "seed": 0,
                 "python_per_prompt_top1": list(q if s == 0.8 else np.clip(q + 0.3, 0, 1)),
                 "python_top1_agreement": float(np.mean(q))}
                for (u, m), q in quality.items() for s in (0.1, 0.8)]
        results = pd.DataFrame(rows)
        summary = stats.h2_summary(results, {"head": "ablation", "neuron": "ablation"},
                                   quality="python_per_prompt_top1")
        summary = summary.drop(columns=["reference", "sparsity"]).round(3)  # as notebook 03 saves it
        (run / "03_hypotheses.json").write_text(json.dumps({"h1": h1.round(4).to_dict(orient="records"),
                                                           "h2_at_max_sparsity": summary.to_dict(orient="records")}))
        results.drop(columns=["python_per_prompt_top1"]).to_csv(run / "03_results.csv", index=False)
        pd.DataFrame({"tau": [0.01, 0.1], "removed": [2, 9], "units": [16, 16], "sparsity": [0.125, 0.5625],
                      "kl": [0.01, 0.2], "eval_kl": [0.02, 0.3], "eval_top1": [0.93, 0.51], "params": [100, 80]}
                     ).to_csv(run / "03_acdc.csv", index=False)
        agreement = pd.concat([h1] * 5, ignore_index=True)  # > FOLD_ROWS rows, to be folded
        (run / "02_agreement_with_ablation.json").write_text(agreement.to_json(orient="records"))
    if "04" in finished:
        (run / "graphs").mkdir()
        for stem in ("degradation_heads", "extra_plot"):
            (run / "graphs" / f"{stem}.html").write_text("<html></html>")
        (run / "graphs" / "degradation_heads.png").write_bytes(b"\x89PNG fake")
    return run


class Tree(HTMLParser):
    """The report's structure: the h2 sections in order, each element's enclosing tags."""

    def __init__(self):
        super().__init__()
        self.stack, self.events = [], []

    def handle_starttag(self, tag, attrs):
        self.stack.append((tag, dict(attrs)))
        self.events.append(("start", tag, dict(attrs), [t for t, _ in self.stack[:-1]]))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self.stack and data.strip():
            self.events.append(("text", self.stack[-1][0], data.strip(), [t for t, _ in self.stack]))

    def texts(self, tag):
        return [d for kind, t, d, _ in self.events if kind == "text" and t == tag]


def parse(path):
    tree = Tree()
    tree.feed(path.read_text())
    return tree


def finding_blocks(html_text):
    """Each finding's HTML (its <div class=finding>), keyed by its title."""
    out = {}
    for part in html_text.split("<div class=finding>")[1:]:
        title = part.split("<h3>")[1].split("</h3>")[0]
        out[title] = part.split("<h2>")[0]  # findings are contiguous; the next section starts with <h2>
    return out


@pytest.fixture
def full_run(tmp_path, quality):
    run = build_run(tmp_path / "run", quality)
    save_findings([{"title": "IOI heads", "text": "Head 1.2 carries 71% of the logit difference.",
                    "table": pd.DataFrame({"head": range(20), "share": np.linspace(0, 1, 20)}),
                    "figure": "graphs/extra_plot.html"}], run / "06_findings.json")
    make_nb(run / "06_circuits.ipynb", "SEED = 0")
    meta = json.loads((run / "run.json").read_text())
    meta["notebooks"].append({"notebook": "06_circuits.ipynb", "seconds": 2.0, "parameters": {"SEED": 0}})
    (run / "run.json").write_text(json.dumps(meta))
    return run


def test_h2_verdicts_state_the_numbers(full_run, quality):
    md, html = write_report(full_run)
    text = md.read_text()
    heads = text.split("### H2 on m-a heads")[1].split("###")[0]
    ref, rnd = quality["head", "ablation"], quality["head", "random"]
    # ratio and significance from numpy/scipy directly (Holm over the 2 compared methods)
    p_rnd = st.wilcoxon(ref - rnd, alternative="greater").pvalue
    assert min(1.0, 2 * p_rnd) < 0.001
    ratio = np.mean(ref) / np.mean(rnd)
    lo, hi = st.bootstrap((rnd,), np.mean, n_resamples=2000, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    r3 = lambda x: f"{round(x, 3):.2f}"  # noqa: E731 - notebook 03 saves the summary rounded to 3 digits
    assert "at 80% sparsity, ablation selection retained significantly more quality" in heads
    assert (f"random (ratio {r3(ratio)}, random retained {r3(np.mean(rnd))}, 95% CI {r3(lo)}-{r3(hi)}, "
            "Holm p < 0.001)") in heads
    assert "than 1 of the 2 other methods" in heads and "on held-out python prompts" in heads
    mag = quality["head", "magnitude"]
    # Holm step-down by hand: the larger of the two p-values is kept as it is (at least the first's adjusted one)
    p_mag = min(1.0, max(2 * p_rnd, st.wilcoxon(ref - mag, alternative="greater").pvalue))
    assert np.mean(ref) > np.mean(mag) and p_mag > 0.05  # the synthetic case meant: more, not significantly
    assert f"It retained more, but not significantly, than magnitude (ratio {r3(np.mean(ref) / np.mean(mag))}" in heads
    assert f"Holm p = {round(p_mag, 3):.3g})" in heads
    neurons = text.split("### H2 on m-a neurons")[1].split("###")[0]
    assert "ablation selection did NOT retain significantly more quality" in neurons
    nr = np.mean(quality["neuron", "ablation"]) / np.mean(quality["neuron", "random"])
    assert f"no more quality than random (ratio {nr:.2f})" in neurons
    # the same verdicts in the HTML finding's table
    block = finding_blocks(html.read_text())["H2 on m-a heads: causal selection at high sparsity"]
    assert "significantly more" in block and "03_pruning_sweep.ipynb" in block


def test_h1_token_sets_and_summary_findings(full_run):
    md, _ = write_report(full_run)
    text = md.read_text()
    h1 = json.loads((full_run / "03_hypotheses.json").read_text())["h1"]
    best = max(h1, key=lambda r: r["spearman"])
    worst = min(h1, key=lambda r: r["spearman"])
    assert best["method"] == "attribution-abs" and worst["method"] == "random"
    assert (f"On m-a heads (16 units), attribution-abs ranks units most like the reference (ablation) "
            f"(Spearman {best['spearman']:.2f}, top-4 overlap {best['topk_overlap']:.2f}) and random least "
            f"(Spearman {worst['spearman']:.2f})") in text
    assert "On held-out prompts, the cpp token set (against python) separates the domains: log mass -6.47 on cpp prompts vs -7.53 on " \
           "python prompts, +1.06 nats (2.9x the mass)" in text
    assert "On held-out prompts, the python token set (against cpp) does NOT separate the domains" in text
    assert "3.43 nats on python against 6.50 for the unigram baseline" in text
    assert "threshold 0.1 removes 9 of 16 units (held-out top-1 agreement 0.51" in text


def test_order_links_figures_and_folding(full_run):
    _, html = write_report(full_run)
    tree = parse(html)
    h2 = tree.texts("h2")
    assert h2[0] == "Findings" and h2.index("Findings") < h2.index("Notebooks") < h2.index("Tables")
    assert "Missing from this run" not in h2  # everything finished and readable
    h3 = tree.texts("h3")
    assert h3.index("IOI heads") > h3.index("ACDC: a KL threshold chooses the sparsity")  # notebook order
    assert h3.index("IOI heads") < h3.index("02_agreement_with_ablation")  # findings before tables
    text = html.read_text()
    blocks = finding_blocks(text)
    # each finding links its executed notebook
    assert "href='03_pruning_sweep.ipynb'" in blocks["H1: does importance predict the effect of removing a unit?"]
    assert "href='06_circuits.ipynb'" in blocks["IOI heads"]
    assert "href='01_reverse_intervention.ipynb'" in blocks["Token sets: domain separation"]
    # the PNG inline (data URI) inside the finding it belongs to, its HTML linked and iframed
    heads = blocks["H2 on m-a heads: causal selection at high sparsity"]
    assert "src='data:image/png;base64," in heads and "<iframe src='graphs/degradation_heads.html'" in heads
    assert "<iframe src='graphs/extra_plot.html'" in blocks["IOI heads"]
    # self-contained: nothing loaded from the network
    assert "http://" not in text and "https://" not in text and "<script" not in text
    imgs = [a for kind, t, a, _ in tree.events if kind == "start" and t == "img"]
    assert imgs and all(a["src"].startswith("data:") for a in imgs)
    # long tables are folded with their row count, short ones not
    summaries = tree.texts("summary")
    n_agree = len(json.loads((full_run / "02_agreement_with_ablation.json").read_text()))
    assert n_agree > FOLD_ROWS and f"02_agreement_with_ablation: {n_agree} rows" in summaries
    assert "IOI heads table: 20 rows" in summaries
    tables = [(anc, a) for kind, t, a, anc in tree.events if kind == "start" and t == "table"]
    folded = sum("details" in anc for anc, _ in tables)
    assert 0 < folded < len(tables)
    # numbers right-aligned
    assert any(kind == "start" and t == "td" and a.get("class") == "num" for kind, t, a, _ in tree.events)


def test_markdown_has_the_same_order(full_run):
    md, _ = write_report(full_run)
    text = md.read_text()
    assert text.index("## Findings") < text.index("### H2 on m-a heads") < text.index("## Notebooks") \
        < text.index("## Tables")
    assert "![degradation_heads](graphs/degradation_heads.png)" in text
    assert "[03_pruning_sweep.ipynb](03_pruning_sweep.ipynb)" in text.split("## Notebooks")[0]
    assert "<details><summary>02_agreement_with_ablation:" in text


def test_partial_run_reports_what_exists_and_what_is_missing(tmp_path, quality):
    run = build_run(tmp_path / "run", quality, finished=("00", "01"))
    make_nb(run / "02_causal_scoring.ipynb", "SEED = 0")  # started by papermill, failed: no marker
    md, html = write_report(run, expected=["00_models_and_prompts.ipynb", "01_reverse_intervention.ipynb",
                                           "02_causal_scoring.ipynb", "03_pruning_sweep.ipynb"])
    text = md.read_text()
    assert "Token sets: domain separation" in text and "The model on its prompts" in text
    assert "H2 on" not in text and "H1:" not in text
    missing = text.split("## Missing from this run")[1].split("## Notebooks")[0]
    assert "02_causal_scoring.ipynb: started, not finished (failed or interrupted)" in missing
    assert "03_pruning_sweep.ipynb: not run: no H1 and H2 verdicts (notebook 03)" in missing
    assert parse(html).texts("h2")[:2] == ["Findings", "Missing from this run"]


def test_malformed_files_are_listed_not_fatal(full_run):
    (full_run / "02_agreement_with_ablation.json").write_text('{"model": ')
    (full_run / "05_findings.json").write_text(json.dumps([{"title": "x", "txt": "typo"}]))
    (full_run / "00_summary.json").write_text(json.dumps({"model": "m", "losses": "not rows"}))
    save_findings([{"title": "Lost figure", "text": "t", "figure": "graphs/gone.png"}], full_run / "07_findings.json")
    md, html = write_report(full_run)
    missing = md.read_text().split("## Missing from this run")[1].split("## Notebooks")[0]
    assert "`02_agreement_with_ablation.json` not readable as JSON (" in missing
    assert "`00_summary.json` has an unexpected layout (ValueError" in missing
    assert "`05_findings.json` breaks the findings schema: 05_findings.json[0]: unknown field(s) ['txt']" in missing
    assert "H2 on m-a heads" in md.read_text()  # the readable files still give their findings
    assert "The model on its prompts" not in md.read_text()
    assert "figure graphs/gone is missing from the run folder" in finding_blocks(html.read_text())["Lost figure"]
    assert "gone (figure graphs/gone is missing from the run folder)" in md.read_text()
    with pytest.raises(FileNotFoundError, match="run folder .*nowhere does not exist"):
        write_report(full_run / "nowhere")


def test_save_findings_checks_the_schema(tmp_path):
    path = tmp_path / "06_findings.json"
    good = [{"title": "t", "text": "x", "table": [{"a": 1.5}], "figure": "graphs/f.png"}]
    save_findings(good, path)
    assert json.loads(path.read_text()) == good
    cases = [
        ({"title": "t", "text": "x"}, r"must be a list of objects, got dict"),
        ([{"text": "x"}], r"\[0\]: field 'title' must be a non-empty string, got None"),
        ([{"title": "t", "text": 3}], r"\[0\] \('t'\): field 'text' must be a string, got int"),
        ([{"title": "t", "text": "x", "tabel": []}], r"unknown field\(s\) \['tabel'\]"),
        ([{"title": "t", "text": "x", "table": {"a": [1]}}], r"field 'table' must be a list of records"),
        ([{"title": "t", "text": "x", "table": [{"a": np.float32(1)}]}], r"field 'table' holds a value JSON cannot"),
        ([{"title": "t", "text": "x", "figure": "/abs/f.png"}], r"field 'figure' must be a path relative"),
        ([{"title": "t", "text": "x", "figure": "../f.png"}], r"field 'figure' must be a path relative"),
        (["just text"], r"\[0\]: a finding must be an object"),
        ([{"title": "t", "text": "x", "figure": "graphs/f.pdf"}], r"must name a .png, .*or .html file, got 'graphs/f.pdf'"),
    ]
    for bad, match in cases:
        with pytest.raises(FindingsError, match=match):
            save_findings(bad, path)
    with pytest.raises(FindingsError, match="name the file NN_findings.json"):
        save_findings(good, tmp_path / "findings.json")
    assert issubclass(FindingsError, ValueError)
    assert validate_findings([{"title": "t", "text": "x", "table": pd.DataFrame({"a": [1, 2]})}])[0]["table"] == \
        [{"a": 1}, {"a": 2}]


def test_public_names():
    import causal_nb
    from causal_nb.notebook import report, runner

    assert runner.write_report is report.write_report  # still importable from the runner
    assert causal_nb.save_findings is report.save_findings


@pytest.mark.slow
def test_a_failed_run_still_writes_the_report(tmp_path):
    from causal_nb.notebook.runner import RunError, run_series

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    make_nb(nbs / "01_first.ipynb", 'OUT_DIR = "x"',
            'import json, pathlib\npathlib.Path(OUT_DIR, "01_findings.json").write_text(json.dumps('
            '[{"title": "First", "text": "it ran"}]))')
    make_nb(nbs / "02_second.ipynb", 'OUT_DIR = "x"', 'raise ValueError("asked to fail")')
    make_nb(nbs / "03_third.ipynb", 'OUT_DIR = "x"')
    with pytest.raises(RunError, match="02_second.ipynb failed"):
        run_series("demo", out_dir=tmp_path / "run", notebooks_dir=nbs, progress=False)
    text = (tmp_path / "run" / "report.md").read_text()
    assert "### First" in text and "it ran" in text
    assert "02_second.ipynb: started, not finished" in text and "03_third.ipynb: not run" in text
