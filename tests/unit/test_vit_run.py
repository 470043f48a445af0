"""``python -m causal_nb vit run`` (``evaluation.vit_run``) on small idx files and tiny ViTs the tests write:

- ``--skip-training --method both``: the documented folders (``optimized/`` with the EAP and ACDC
  names, ``evaluation/evaluation_metrics.json``, ``run.json``), the baseline's test top-1 equal to
  the plain Hugging Face model's, the heads ACDC removed equal to a direct ``cnb.acdc`` walk's;
- ``--mode train`` (one step) then ``--mode optimize`` and ``--mode evaluate`` chained through the folder;
- stages whose input is missing, and bad fractions, are named before anything runs;
- ``optimize_vit(method="acdc", acdc_walks=...)`` prunes by the caller's walks without walking again.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_vit_train import write_idx

import causal_nb as cnb
from causal_nb.__main__ import main
from causal_nb.zoo.tiny import make_tiny_vit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), n_train=64, n_test=24)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny", n_layers=2, d_model=32, n_heads=4, d_mlp=64, seed=2)


def common(data_dir, out):
    return ["--data-dir", str(data_dir), "--out", str(out), "--val-size", "16", "--n-images", "16", "--no-png",
            "--no-progress", "--units", "head"]


def removed_heads(folder) -> set:
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    return {(i, h) for i, layer in enumerate(spec["layers"]) for h in layer["removed_heads"]}


def test_skip_training_runs_both_methods_into_the_documented_folders(vit_folder, data_dir, tmp_path):
    from transformers import ViTForImageClassification

    out = tmp_path / "run"
    assert main(["vit", "run", "--skip-training", "--model", str(vit_folder), "--method", "both",
                 "--eap-keep-ratios", "0.5", "--acdc-thresholds", "0.05", *common(data_dir, out)]) == 0
    assert sorted(p.name for p in (out / "optimized").iterdir()) == ["tiny_keep_0.5_attribution", "tiny_threshold_0.05"]
    metrics = json.loads((out / "evaluation" / "evaluation_metrics.json").read_text())
    assert [m["model"] for m in metrics["models"]] == ["tiny", "tiny_keep_0.5_attribution", "tiny_threshold_0.05"]
    test = cnb.load_fashion_mnist("test", data_dir)
    with torch.no_grad():
        logits = ViTForImageClassification.from_pretrained(vit_folder).eval()(pixel_values=test.images).logits
    assert metrics["models"][0]["top1"] == pytest.approx(float((logits.argmax(-1) == test.labels).double().mean()))
    run = json.loads((out / "run.json").read_text())
    assert run["baseline"] == str(vit_folder) and run["optimize"]["models"] == ["tiny_keep_0.5_attribution",
                                                                                "tiny_threshold_0.05"]
    assert len(removed_heads(out / "optimized" / "tiny_keep_0.5_attribution")) == 4  # half of 2 x 4 heads
    val = cnb.load_fashion_mnist("val", data_dir, val_size=16)
    walk = cnb.acdc(cnb.load_model(vit_folder, device="cpu"), task=cnb.ImageClassificationTask(val.images, val.labels),
                    thresholds=[0.05], unit="head", kind="zero", progress=False)
    want = {(la, h) for la, hs in walk.attrs["selections"][0].items() for h in hs}
    assert want and removed_heads(out / "optimized" / "tiny_threshold_0.05") == want


def test_the_stages_chain_through_the_run_folder(data_dir, tmp_path):
    out = tmp_path / "chain"
    assert main(["vit", "run", "--mode", "train", "--epochs", "1", "--steps-per-epoch", "1", "--train-batch-size", "8",
                 *common(data_dir, out)]) == 0
    assert (out / "baseline" / "model" / "model.safetensors").exists() and (out / "baseline" / "checkpoint.pt").exists()
    assert not (out / "optimized").exists()
    assert main(["vit", "run", "--mode", "optimize", "--method", "eap", "--eap-keep-ratios", "0.75",
                 "--scores", "magnitude", *common(data_dir, out)]) == 0
    assert [p.name for p in (out / "optimized").iterdir()] == ["vit-fashion-mnist_keep_0.75_magnitude"]
    assert not (out / "evaluation").exists()
    assert main(["vit", "run", "--mode", "evaluate", *common(data_dir, out)]) == 0
    metrics = json.loads((out / "evaluation" / "evaluation_metrics.json").read_text())
    assert [m["model"] for m in metrics["models"]] == ["vit-fashion-mnist", "vit-fashion-mnist_keep_0.75_magnitude"]
    assert metrics["models"][1]["params"] < metrics["models"][0]["params"]


def test_missing_stages_and_bad_fractions_are_named(data_dir, tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["vit", "run", "--mode", "optimize", *common(data_dir, out)]) == 1
    assert "no trained baseline" in capsys.readouterr().err
    assert main(["vit", "run", "--mode", "evaluate", "--skip-training", *common(data_dir, out)]) == 1
    assert "run `vit run --mode optimize" in capsys.readouterr().err
    assert main(["vit", "run", "--skip-training", "--acdc-thresholds", "2", *common(data_dir, out)]) == 1
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["vit", "run", "--skip-training", "--finetune-epochs", "-1", *common(data_dir, out)]) == 1
    assert "--finetune-epochs -1 is negative" in capsys.readouterr().err
    assert not (out / "optimized").exists()


def test_precomputed_acdc_walks_are_used_instead_of_walking_again(vit_folder, data_dir, tmp_path, monkeypatch):
    from causal_nb.analyses import acdc as acdc_module

    val = cnb.load_fashion_mnist("val", data_dir, val_size=16)
    model = cnb.load_model(vit_folder, device="cpu")
    task = cnb.ImageClassificationTask(val.images, val.labels)
    walk = cnb.acdc(model, task=task, thresholds=[0.02, 0.05], unit="head", kind="zero", progress=False)

    def no_walk(*a, **k):
        raise AssertionError("optimize_vit walked again")

    monkeypatch.setattr(acdc_module, "acdc", no_walk)
    saved = cnb.optimize_vit(model, task, method="acdc", thresholds=[0.02, 0.05], units=("head",),
                             acdc_walks={"head": walk}, out=tmp_path / "opt", base="tiny")
    for i, folder in enumerate(saved.values()):
        assert removed_heads(folder) == {(la, h) for la, hs in walk.attrs["selections"][i].items() for h in hs}
    with pytest.raises(ValueError, match=r"walked at thresholds \[0.02, 0.05\].*walk at the same thresholds"):
        cnb.optimize_vit(model, task, method="acdc", thresholds=[0.05], units=("head",), acdc_walks={"head": walk})
    with pytest.raises(ValueError, match="acdc_walks has no 'neuron' walk"):
        cnb.optimize_vit(model, task, method="acdc", thresholds=[0.02, 0.05], acdc_walks={"head": walk})
