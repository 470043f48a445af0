"""The benchmark scripts run end to end on tiny models (their numbers are not checked here,
only that the code paths work and the correctness columns hold), so the GPU path, which only
shares code with the CPU one, does not rot unseen."""

import re

import pytest
import torch
from benchmark_scripts import load_benchmark as _load


def test_bench_patching_rows_are_exact_on_a_gpt2_shape():
    bp = _load("bench_patching")
    model = bp.shape_model(torch.float32, device="cpu", shape={"n_layers": 2, "d_model": 32, "n_heads": 4, "d_mlp": 64})
    rows = bp.bench(model, "tiny", 4, 16, 1, ["head", "mlp", "neuron"])
    assert [r["method"] for r in rows] == ["exact head", "exact mlp", "exact neuron (layer 0, 64)", "attribution head"]
    for r in rows[:3]:
        diff = float(re.search(r"max abs diff ([0-9.e+-]+)", r["check"]).group(1))
        assert diff < 1e-5 and r["ours_s"] > 0 and r["ratio"] > 0, r
    assert "Pearson" in rows[3]["check"]
    assert "| tiny | exact head |" in bp.table(rows)


def test_bench_pruning_prints_its_table(tiny_dirs):
    table = _load("bench_pruning").main(["--model", str(tiny_dirs["llama"]), "--tokens", "16", "--batches", "1,2",
                                          "--repeats", "3"])
    assert table.count("| physical |") == 2 and table.count("| dense |") == 2
    diff = float(re.search(r"max \|physical - masked\| logits = ([0-9.e+-]+)", table).group(1))
    assert diff < 1e-5


def test_bench_minilm_prune_runs_on_a_tiny_bert(bert_folder):
    out = _load("bench_minilm_prune").main(["--model", str(bert_folder), "--n-train", "4", "--n-eval", "6",
                                             "--sparsities", "0.25", "0.5"])
    assert len(out["sweep"]) == 8 and {r["method"] for r in out["sweep"]} == {"ablation", "ablation-abs", "magnitude", "random"}
    assert out["physical_vs_masked_max_rel"] < 1e-5 and len(out["h2"]) == len(out["h2_abs"]) == 8
    assert all(r["params"] < out["dense"]["params"] for r in out["sweep"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_patching_gpu_shape_runs_in_bf16():
    bp = _load("bench_patching")
    model = bp.shape_model(torch.bfloat16, shape={"n_layers": 2, "d_model": 64, "n_heads": 4, "d_mlp": 128})
    rows = bp.bench(model, "tiny bf16", 8, 32, 1, ["head"])
    assert next(model.parameters()).device.type == "cuda" and all(r["ratio"] > 0 for r in rows)
    from causal_nb.engine.replay import stack_size

    assert stack_size(model, 8, 32, 15, 4) >= 1


def test_bench_compose_runs_on_a_tiny_llama(tiny_dirs, tmp_path, capsys, monkeypatch):
    import json

    from causal_nb.pruning import compose_stages

    for k, v in {"seq": 32, "n_files": 4, "n_heldout": 8, "n_files_heldout": 4, "n_train": 32}.items():
        monkeypatch.setitem(compose_stages.DATA, k, v)  # the code path, not the numbers

    _load("bench_compose").main(["--model", str(tiny_dirs["llama"]), "--attention", "0.25", "0.5", "--linear", "0.5",
                                 "0.5", "--module-steps", "2", "--steps", "2", "--baseline-steps", "4",
                                 "--eval-every", "2", "--train-windows", "32", "--calib-steps", "2", "--calib-repeats", "1",
                                 "--no-png", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "results.json").read_text())
    # 2 configurations share the 6 linear variants; the attention rates differ: 6 + 2 + 2 variants
    assert [f["variants"] for f in out["family"]] == [10, 10] and [f["rule"] for f in out["family"]] == ["baseline", "best"]
    assert all(c["composed_final"] > 0 and c["baseline_final"] > 0 for c in out["configs"])
    # the baseline rule's target is the baseline's own best: the baseline always reaches it
    assert all(c["baseline_steps"] == c["baseline_steps"] for c in out["configs"] if c["rule"] == "baseline")
    text = capsys.readouterr().out
    table = (tmp_path / "table.md").read_text()
    assert "| rule | configs | variants |" in text and table.split("\nIn model-step units")[0] in text
    units = out["calibration"]["units"]
    assert units["model"] == 1 and len(units) == 10 + 2 and "| baseline |" in table.split("model-step units")[1]
    # the tables redone from the saved curves, without training, are the same
    assert {f.name for f in (tmp_path / "figures").iterdir()} == {"loss_curves_step.html", "loss_curves_seconds.html",
                                                                   "scheme.html"}
    _load("bench_compose").main(["--from-saved", "--calib-steps", "2", "--calib-repeats", "1", "--no-png", "--out",
                                 str(tmp_path)])
    again = json.loads((tmp_path / "results.json").read_text())
    assert [c["target"] for c in again["configs"]] == pytest.approx([c["target"] for c in out["configs"]])
    assert [f["baseline_steps"] for f in again["family"]] == [f["baseline_steps"] for f in out["family"]]
