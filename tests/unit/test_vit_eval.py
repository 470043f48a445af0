"""The ViT evaluator (``evaluation.vit_eval``) and optimise step (``evaluation.vit_pipeline``):

- the metrics of known class probabilities equal numpy computations written out here (top-k
  by argsort, macro precision/recall/F1 from a hand-counted confusion matrix, entropy, confidences);
- the Pareto front equals a hand-computed one, and the recommendation is the one it implies;
- on tiny random ViTs: accuracy against the plain Hugging Face model's logits, parameters
  against its count, GFLOPs against the ViT's matmul count written out by hand; the JSON, the HTML
  figure (and the PNG, or an error that says why), and the report;
- ``optimize_vit``: keep ratios pruned physically by each score, saved as ``<base>_keep_<r>_<score>``,
  reloaded with the kept head counts; ACDC refused with what to use;
- bad input (ratios outside (0, 1], an empty folder, wrong image size or channels, labels
  out of range) named, on the command line too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.evaluation.vit_eval import classification_metrics, recommend_model, vit_report
from causal_nb.evaluation.vit_pipeline import check_fraction, find_model_folders, parse_optimized_name
from causal_nb.zoo.tiny import make_tiny_vit

D, HEADS, D_MLP, N_LAYERS = 32, 4, 64, 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vits")
    return [make_tiny_vit(root / f"vit{i}", n_layers=N_LAYERS, d_model=D, n_heads=HEADS, d_mlp=D_MLP, seed=i)
            for i in range(2)]


def images_of(seed, n=24, size=28, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


IMAGES, LABELS = images_of(0)


def test_classification_metrics_equal_numpy_on_known_probabilities():
    rng = np.random.default_rng(0)
    n, k = 200, 7
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.where(rng.random(n) < 0.5, probs.argmax(1), rng.integers(0, k, n))
    labels[labels == 6] = 5  # class 6 never occurs: its per-class accuracy is NaN, its precision counts 0
    got, per_class = classification_metrics(labels, probs, [f"c{i}" for i in range(k)])
    pred = probs.argmax(1)
    conf = np.zeros((k, k))
    for t, p in zip(labels, pred):
        conf[t, p] += 1
    tp = np.diag(conf)
    prec = np.divide(tp, conf.sum(0), out=np.zeros(k), where=conf.sum(0) > 0)
    rec = np.divide(tp, conf.sum(1), out=np.zeros(k), where=conf.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=prec + rec > 0)
    top5 = np.mean([labels[i] in np.argsort(-probs[i])[:5] for i in range(n)])
    right = pred == labels
    want = {"top1": right.mean(), "top5": top5, "precision_macro": prec.mean(), "recall_macro": rec.mean(),
            "f1_macro": f1.mean(), "mean_confidence": probs.max(1).mean(),
            "confidence_correct": probs.max(1)[right].mean(), "confidence_incorrect": probs.max(1)[~right].mean(),
            "mean_entropy": -(probs * np.log(probs)).sum(1).mean()}
    want["confidence_gap"] = want["confidence_correct"] - want["confidence_incorrect"]
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    for c in range(6):
        assert per_class[f"c{c}"] == pytest.approx(rec[c], abs=1e-12)
    assert np.isnan(per_class["c6"])


def test_the_pareto_front_equals_a_hand_computed_one():
    acc = [0.90, 0.89, 0.85, 0.91, 0.85, 0.80, 0.89]
    lat = [10.0, 6.0, 5.0, 20.0, 7.0, 5.0, 6.0]
    # 0 beaten by nobody faster and as accurate; 1 and 6 tie (neither dominates the other);
    # 2 is the fastest at 0.85; 3 the most accurate; 4 dominated by 2; 5 dominated by 2
    assert cnb.pareto_front(acc, lat).tolist() == [True, True, True, True, False, False, True]
    import pandas as pd

    table = pd.DataFrame({"model": list("abcdefg"), "top1": acc, "ms_per_batch": lat,
                          "pareto": cnb.pareto_front(acc, lat)})
    rec = recommend_model(table, tolerance=0.02)  # within 0.02 of 0.91: a (10 ms), b and g (6 ms), d
    assert rec["model"] == "b" and rec["speedup"] == pytest.approx(20 / 6) and rec["top1_drop"] == pytest.approx(0.02)
    assert recommend_model(table, tolerance=0.0)["model"] == "d"


def test_the_evaluator_against_the_plain_hf_model(folders, tmp_path):
    from transformers import ViTForImageClassification

    ev = cnb.evaluate_vit_models([str(f) for f in folders], IMAGES, LABELS, batch_size=8)
    assert list(ev.table.model) == ["vit0", "vit1"] and ev.n_images == len(LABELS) and ev.batch_size == 8
    n_tok = 1 + (28 // 7) ** 2
    hand_flops = (2 * (28 // 7) ** 2 * 49 * D + 2 * D * 10
                  + N_LAYERS * (2 * n_tok * D * 3 * D + 2 * 2 * n_tok * n_tok * D + 2 * n_tok * D * D
                                + 2 * 2 * n_tok * D * D_MLP))
    for f, row in zip(folders, ev.table.itertuples()):
        hf = ViTForImageClassification.from_pretrained(f).eval()
        with torch.no_grad():
            pred = hf(pixel_values=IMAGES).logits.argmax(-1)
        assert row.top1 == pytest.approx(float((pred == LABELS).float().mean()))
        assert row.params == sum(p.numel() for p in hf.parameters())
        assert row.gflops == pytest.approx(hand_flops / 1e9)
        assert row.throughput == pytest.approx(8 / row.ms_per_batch * 1e3)
        assert row.accuracy_per_ms == pytest.approx(row.top1 / row.ms_per_batch)
    assert ev.table.pareto.tolist() == cnb.pareto_front(ev.table.top1, ev.table.ms_per_batch).tolist()
    paths = cnb.write_vit_evaluation(ev, tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert [m["model"] for m in saved["models"]] == ["vit0", "vit1"]
    assert saved["pareto"] == list(ev.table.model[ev.table.pareto])
    assert saved["recommendation"]["model"] in saved["pareto"]
    assert paths["html"].stat().st_size > 1000
    assert ("png" in paths and paths["png"].exists()) or "Chrome" in paths["png_error"]
    fig, df = cnb.plot_vit_evaluation(ev)
    assert len(fig.layout.annotations) == 6 and df is ev.table
    report = vit_report(ev)
    assert "Recommendation: deploy" in report and "Pareto-optimal" in report


def test_optimize_saves_reloadable_pruned_models_under_the_naming_convention(folders, tmp_path):
    model = cnb.load_model(folders[0], device="cpu")
    task = cnb.ImageClassificationTask(IMAGES, LABELS)
    saved = cnb.optimize_vit(model, task, keep_ratios=[0.75, 0.5], scores=["magnitude", "random"],
                             units=["head"], out=tmp_path / "opt", base="tiny")
    assert sorted(saved) == ["tiny_keep_0.5_magnitude", "tiny_keep_0.5_random", "tiny_keep_0.75_magnitude",
                             "tiny_keep_0.75_random"]
    mag = cnb.score(model, task=task, method="magnitude", unit="head")
    n_params = sum(p.numel() for p in cnb.models.hf.plain_hf(model, share=True).parameters())
    for name, folder in saved.items():
        parsed = parse_optimized_name(name)
        assert parsed == {"base": "tiny", "kind": "keep", "value": float(name.split("_")[2]),
                          "score": name.split("_")[3]}
        back = cnb.load_model(folder, device="cpu")
        removed = removed_heads(folder)
        assert N_LAYERS * HEADS - len(removed) == round(parsed["value"] * N_LAYERS * HEADS)
        dh = D // HEADS  # a head: dh rows of W_Q, W_K, W_V (and their biases), dh columns of W_O
        assert (sum(p.numel() for p in cnb.models.hf.plain_hf(back, share=True).parameters())
                == n_params - len(removed) * (4 * D * dh + 3 * dh))
        with torch.no_grad():
            assert back(IMAGES[:2], return_type="logits").shape == (2, 10)
    # the magnitude copy removed the lowest-norm heads, as the table ranks them
    low = mag.sort_values("score").head(N_LAYERS * HEADS // 2)
    assert removed_heads(saved["tiny_keep_0.5_magnitude"]) == {(int(r.layer), int(r.head)) for r in low.itertuples()}
    found = find_model_folders(tmp_path / "opt")
    assert sorted(p.name for p in found) == sorted(saved)
    # ACDC: <base>_threshold_<t>, the walk's heads removed, and the saved model's KL is the walk's
    walk = cnb.acdc(model, task=task, thresholds=[0.005, 0.05], unit="head", progress=False)
    saved = cnb.optimize_vit(model, task, method="acdc", thresholds=[0.005, 0.05], units=("head",),
                             out=tmp_path / "acdc", base="tiny")
    assert list(saved) == ["tiny_threshold_0.005", "tiny_threshold_0.05"]
    with torch.no_grad():
        full = torch.log_softmax(model(task.images, return_type="logits").double(), -1)
    for i, folder in enumerate(saved.values()):
        sel = walk.attrs["selections"][i]
        assert removed_heads(folder) == {(la, h) for la, hs in sel.items() for h in hs}
        with torch.no_grad():
            got = torch.log_softmax(cnb.load_model(folder, device="cpu")(task.images, return_type="logits").double(), -1)
        assert float((full.exp() * (full - got)).sum(-1).mean()) == pytest.approx(walk["kl"][i], abs=1e-5)
    assert walk["removed"][0] < walk["removed"][1] < walk["units"][1]  # the thresholds matter
    with pytest.raises(ValueError, match="outside"):
        cnb.optimize_vit(model, task, method="acdc", thresholds=[1.5])


def removed_heads(folder) -> set:
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    return {(i, h) for i, layer in enumerate(spec["layers"]) for h in layer["removed_heads"]}


@pytest.mark.parametrize("use_task_loss", [True, False])
def test_the_ablation_route_removes_the_heads_a_plain_hf_loop_finds_least_damaging(folders, tmp_path, use_task_loss):
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification.from_pretrained(folders[1]).eval()
    dh = D // HEADS

    def logprobs(layer=None, head=None):
        def zero(mod, args):
            x = args[0].clone()
            x[..., head * dh:(head + 1) * dh] = 0
            return (x, *args[1:])
        h = None if layer is None else hf.vit.layers[layer].attention.o_proj.register_forward_pre_hook(zero)
        with torch.no_grad():
            out = torch.log_softmax(hf(pixel_values=IMAGES).logits.double(), -1)
        if h is not None:
            h.remove()
        return out

    base = logprobs()
    damage = {}
    for layer in range(N_LAYERS):
        for head in range(HEADS):
            lp = logprobs(layer, head)
            if use_task_loss:  # cross-entropy increase
                damage[layer, head] = float((base - lp)[torch.arange(len(LABELS)), LABELS].mean())
            else:  # KL(unpruned || ablated)
                damage[layer, head] = float((base.exp() * (base - lp)).sum(-1).mean())
    want = set(sorted(damage, key=damage.get)[:2])  # keep 0.75 of 8 heads: the 2 least damaging go
    model = cnb.load_model(folders[1], device="cpu")
    saved = cnb.optimize_vit(model, cnb.ImageClassificationTask(IMAGES, LABELS), keep_ratios=[0.75],
                             scores=["ablation", "attribution", "taylor"], units=["head"], out=tmp_path,
                             use_task_loss=use_task_loss)
    assert removed_heads(saved["vit1_keep_0.75_ablation"]) == want
    assert all(len(removed_heads(f)) == 2 for f in saved.values())


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "x"])
def test_ratios_outside_zero_one_are_named(bad, folders):
    with pytest.raises(ValueError, match=r"keep ratio .* (outside \(0, 1\]|not a number)"):
        check_fraction(bad, "keep ratio")
    with pytest.raises(ValueError, match=r"threshold"):
        cnb.optimized_name("vit", threshold=bad)


def test_names_and_bad_inputs(folders, tmp_path):
    assert cnb.optimized_name("runs/vit-fashion-mnist", keep=0.9) == "vit-fashion-mnist_keep_0.9"
    assert cnb.optimized_name("vit", threshold=0.05, score="acdc") == "vit_threshold_0.05_acdc"
    assert parse_optimized_name("vit-fashion-mnist") is None
    with pytest.raises(ValueError, match="no models under"):
        find_model_folders(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        find_model_folders(tmp_path / "missing")
    with pytest.raises(ValueError, match="are 32x32, the model takes 28x28"):
        cnb.evaluate_vit_models([str(folders[0])], *images_of(1, size=32))
    with pytest.raises(ValueError, match="3 channel"):
        cnb.evaluate_vit_models([str(folders[0])], *images_of(1, channels=3))
    with pytest.raises(ValueError, match=r"label\(s\) \[12\] are outside"):
        cnb.evaluate_vit_models([str(folders[0])], IMAGES, torch.full_like(LABELS, 12))
    with pytest.raises(ValueError, match="at least one model"):
        cnb.evaluate_vit_models([], IMAGES, LABELS)


def test_the_command_line_evaluates_and_names_bad_input(folders, tmp_path, capsys):
    from test_vit_train import write_idx

    from causal_nb.__main__ import main

    data = write_idx(tmp_path / "idx", n_train=30, n_test=20)
    out = tmp_path / "ev"
    assert main(["vit", "evaluate", "--model-paths", *map(str, folders), "--data-dir", str(data), "--out", str(out),
                 "--batch-size", "10", "--no-png"]) == 0
    printed = capsys.readouterr().out
    assert "Recommendation: deploy" in printed and (out / "evaluation_metrics.json").exists()
    assert main(["vit", "evaluate", "--auto-find", str(folders[0].parent), "--baseline", str(folders[1]),
                 "--data-dir", str(data), "--out", str(out), "--batch-size", "10", "--no-png"]) == 0
    saved = json.loads((out / "evaluation_metrics.json").read_text())
    assert [m["model"] for m in saved["models"]] == ["vit1", "vit0", "vit1"]
    capsys.readouterr()
    assert main(["vit", "evaluate", "--auto-find", str(tmp_path / "idx"), "--data-dir", str(data)]) == 1
    assert "no models under" in capsys.readouterr().err
    assert main(["vit", "optimize", "--keep-ratios", "0.8", "1.2", "--data-dir", str(data)]) == 1
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["vit", "optimize", "--method", "acdc", "--thresholds", "0.01", "2"]) == 1
    assert "outside (0, 1]" in capsys.readouterr().err
