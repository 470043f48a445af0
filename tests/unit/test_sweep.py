import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from causal_nb.evaluation.sweep import SweepError, load_config, sweep


def config(tiny_dirs, out):
    return {"out": str(out), "models": [str(tiny_dirs["llama"])], "n_prompts": 3, "n_eval_prompts": 2, "n_tokens": 8,
            "methods": ["magnitude", "random", "taylor"], "units": ["head", "neuron", "both"],
            "sparsities": [0.25, 0.5], "eval_domains": ["python", "cpp"]}


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(SweepError, match=r"unknown key\(s\) \['sparsity'\]; valid keys"):
        load_config({"sparsity": [0.5]})
    with pytest.raises(SweepError, match=r"unknown method\(s\) \['wanda'\]"):
        load_config({"methods": ["wanda"]})
    with pytest.raises(SweepError, match="outside"):
        load_config({"sparsities": [0.5, 1.0]})
    with pytest.raises(SweepError, match="no such sweep config"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("methods: [random]\nsparsities: [0.5]\n")
    assert load_config(p).methods == ["random"]


@pytest.mark.slow
def test_killed_sweep_resumes_without_recomputing_and_matches(tiny_dirs, tmp_path):
    cfg_a = config(tiny_dirs, tmp_path / "a")
    cfg_path = tmp_path / "a.yaml"
    cfg_path.write_text(json.dumps(cfg_a))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "causal_nb", "sweep", str(cfg_path), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "a" / "cells"
    deadline = time.time() + 240
    while time.time() < deadline and (not cells.exists() or len(list(cells.glob("*.json"))) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in cells.glob("*.json"))
    assert 4 <= len(done) < 18, len(done)
    for p in cells.glob("*.json"):  # every finished cell file is whole (writes are atomic)
        assert json.loads(p.read_text())["model"] == cfg_a["models"][0]
    with pytest.raises(SweepError, match="already holds this sweep"):
        sweep(cfg_a, progress=False)
    recomputed = []
    resumed = sweep(cfg_a, resume=True, progress=False, on_cell=recomputed.append)
    assert len(recomputed) == 18 - len(done)
    straight = sweep(config(tiny_dirs, tmp_path / "b"), progress=False)
    drop = ["seconds"]
    pd.testing.assert_frame_equal(resumed.drop(columns=drop), straight.drop(columns=drop))
    assert len(pd.read_csv(tmp_path / "a" / "results.csv")) == 18
    assert (tmp_path / "a" / "scores").exists()


def test_incompatible_results_folder_is_refused(tiny_dirs, tmp_path):
    cfg = config(tiny_dirs, tmp_path / "c")
    cfg.update({"methods": ["random"], "units": ["head"], "sparsities": [0.5]})
    df = sweep(cfg, progress=False)
    assert len(df) == 1 and df.python_kl.iloc[0] > 0
    cfg["sparsities"] = [0.25]
    with pytest.raises(SweepError, match="incompatible sweep"):
        sweep(cfg, resume=True, progress=False)


def test_mean_fill_sweep_differs_from_zero_fill(tiny_dirs, tmp_path):
    base = {**config(tiny_dirs, tmp_path / "z"), "methods": ["random"], "units": ["head"], "sparsities": [0.5],
            "eval_domains": ["python"]}
    with pytest.raises(SweepError, match="fill must be"):
        load_config({**base, "fill": "median"})
    zero = sweep(load_config(base), progress=False)
    mean = sweep(load_config({**base, "out": str(tmp_path / "m"), "fill": "mean"}), progress=False)
    assert load_config(base).fingerprint() != load_config({**base, "fill": "mean"}).fingerprint()
    assert zero.python_kl[0] != pytest.approx(mean.python_kl[0], abs=1e-6)


def test_block_sweep_removes_whole_layers(tiny_dirs, tmp_path):
    base = {**config(tiny_dirs, tmp_path / "b"), "methods": ["magnitude"], "units": ["block"],
            "sparsities": [0.0, 0.5], "eval_domains": ["python"]}
    res = sweep(load_config(base), progress=False).sort_values("sparsity")
    assert res.params.iloc[1] < res.params.iloc[0]  # one of the two layers is gone
    assert res.python_kl.iloc[0] == pytest.approx(0.0, abs=1e-6) and res.python_kl.iloc[1] > 0
    # as after a kill between a cell's scores and its result: the rerun reads the cached scores
    (cell,) = [f for f in (tmp_path / "b" / "cells").glob("*.json") if "s0.500" in f.name]
    cell.unlink()
    again = sweep(load_config(base), resume=True, progress=False).sort_values("sparsity")
    assert again.python_kl.tolist() == pytest.approx(res.python_kl.tolist())


def write_prompts(folder, domain, texts):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": f"{domain}-{i}", "text": t, "split": s}) for i, (t, s) in enumerate(texts)]
    (folder / f"{domain}.jsonl").write_text("\n".join(lines) + "\n")


def test_patching_cells_take_prompts_that_fill_n_tokens(tiny_dirs, tmp_path, monkeypatch, method="patching"):
    # python's prompt 1 is far shorter than n_tokens: paired patching cannot align it with cpp's
    # prompt 1, so the sweep must skip it as notebook 02 does (PromptSet.fitting), not fail
    long = {"python": "def function_{i}(alpha, beta):\n    return alpha * beta + {i} - alpha // (beta + 1)\n",
            "cpp": "int function_{i}(int a, int b) {{ return a * b + {i} - a / (b + 1); }} // end of {i}\n"}
    for domain in ("python", "cpp"):
        texts = [(long[domain].format(i=i), "train") for i in range(4)]
        if domain == "python":
            texts.insert(1, ("x", "train"))
        write_prompts(tmp_path / "prompts", domain, texts + [(long[domain].format(i=9), "test")])
    monkeypatch.setenv("CAUSAL_NB_PROMPTS", str(tmp_path / "prompts"))
    cfg = {**config(tiny_dirs, tmp_path / "p"), "methods": [method], "units": ["head"], "sparsities": [0.5],
           "n_prompts": 3, "n_eval_prompts": 1, "n_tokens": 16}
    res = sweep(cfg, progress=False)
    assert len(res) == 1 and res.python_kl.iloc[0] > 0
    (saved,) = (tmp_path / "p" / "scores").rglob(f"{method}_head_seed0.json")
    scores = pd.DataFrame(json.loads(saved.read_text())["scores"])
    assert len(scores) == 8 and scores.score.abs().max() > 0  # 2 layers x 4 heads, clean != corrupted


def test_fingerprint_covers_the_saved_scores_read(tiny_dirs, tmp_path):
    import causal_nb
    from causal_nb.analyses.scoring import save_scores, score

    model = causal_nb.load_model(tiny_dirs["llama"], device="cpu")
    prompts = causal_nb.load_prompts("python", n=3)
    save_scores(score(model, prompts, "magnitude", unit="head", n_tokens=8, progress=False), tmp_path / "s1", model,
                "python", prompts)
    other_scores = score(model, prompts, "random", unit="head", n_tokens=8, seed=3, progress=False)
    other_scores.attrs["method"] = "magnitude"  # other numbers under the same file name
    save_scores(other_scores, tmp_path / "s2", model, "python", prompts)
    base = {**config(tiny_dirs, tmp_path / "f"), "methods": ["magnitude"], "units": ["head"], "sparsities": [0.5],
            "eval_domains": ["python"]}
    one = load_config({**base, "scores_dir": str(tmp_path / "s1")})
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "s1", copy)
    assert one.fingerprint() == load_config({**base, "scores_dir": str(copy)}).fingerprint()  # location: no matter
    other = load_config({**base, "scores_dir": str(tmp_path / "s2")})
    assert one.fingerprint() != other.fingerprint()
    sweep(one, progress=False)
    with pytest.raises(SweepError, match="incompatible sweep"):
        sweep({**base, "scores_dir": str(tmp_path / "s2")}, resume=True, progress=False)
