"""``zoo.train_vit`` (``python -m causal_nb vit train``) on small idx files the tests write:

- training lowers the loss on learnable synthetic classes;
- an interrupted run resumed from its checkpoint ends bit-exactly where the uninterrupted run ends
  (weights and history), and resuming with other settings, or without a checkpoint, is refused;
- the written folder loads with ``load_model`` as a ViT bridge whose logits equal the plain
  Hugging Face model's, with a card that states the test accuracy the plain model gives;
- the command line trains, and names its bad input.
"""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from interrupted import run_killed_after_first_checkpoint

import causal_nb as cnb
from causal_nb.zoo import train_vit as tv
from causal_nb.zoo.train_vit import TrainConfig, TrainVitError, train_vit

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32, "patch_size": 7, "image_size": 28, "channels": 1,
        "n_classes": 10, "description": "tiny test ViT", "why": "fast", "classes": None}


def write_idx(folder, n_train=96, n_test=40, seed=0):
    """Idx files of learnable 28x28 images: class c has brightness ~ 22c, plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (22 * y[:, None, None] + rng.integers(0, 30, (n, 28, 28))).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"))


def config(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup": 2, "val_size": 16,
                          "spec": dict(TINY), **kw})


def test_training_lowers_the_loss(data_dir, tmp_path):
    card = train_vit(tmp_path / "run", config(epochs=6, batch_size=8, lr=1e-2, augment=False), data_dir=data_dir,
                     progress=False)
    losses = [h["train_loss"] for h in card["history"]]
    assert len(losses) == 6 and losses[-1] < 0.92 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert card["data"]["train"] == 80 and card["data"]["test"] == 40


def test_resume_equals_the_uninterrupted_run_bit_exactly(data_dir, tmp_path, monkeypatch):
    full = train_vit(tmp_path / "full", config(), data_dir=data_dir, progress=False)
    run_killed_after_first_checkpoint(monkeypatch, tv, lambda: train_vit(tmp_path / "cut", config(), data_dir=data_dir, progress=False))
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = train_vit(tmp_path / "cut", config(), data_dir=data_dir, resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
    assert resumed["test_top1"] == full["test_top1"]


def test_resume_is_refused_without_a_checkpoint_or_with_other_settings(data_dir, tmp_path):
    with pytest.raises(TrainVitError, match="no checkpoint at"):
        train_vit(tmp_path / "none", config(), data_dir=data_dir, resume=True, progress=False)
    train_vit(tmp_path / "run", config(epochs=1), data_dir=data_dir, progress=False)
    with pytest.raises(TrainVitError, match=r"settings differ.*'lr': \(0.003, 0.001\)"):
        train_vit(tmp_path / "run", config(epochs=1, lr=1e-3), data_dir=data_dir, resume=True, progress=False)
    with pytest.raises(TrainVitError, match="epochs=0 must be at least 1"):
        train_vit(tmp_path / "x", config(epochs=0), data_dir=data_dir, progress=False)
    with pytest.raises(TrainVitError, match="weight_decay=-1.0 must be at least 0"):
        train_vit(tmp_path / "x", config(weight_decay=-1.0), data_dir=data_dir, progress=False)


def test_the_written_folder_loads_as_a_vit_bridge_with_a_truthful_card(data_dir, tmp_path):
    from transformers import ViTForImageClassification

    card = train_vit(tmp_path / "run", config(epochs=2), data_dir=data_dir, progress=False)
    folder = tmp_path / "run" / "model"
    assert json.loads((folder / "card.json").read_text()) == card
    assert f"{card['test_top1']:.4f}" in (folder / "README.md").read_text()
    hf = ViTForImageClassification.from_pretrained(folder).eval()
    test = cnb.load_fashion_mnist("test", data_dir)
    with torch.no_grad():
        logits = hf(pixel_values=test.images).logits
    assert card["test_top1"] == round(float((logits.argmax(-1) == test.labels).float().mean()), 5)
    bridge = cnb.load_model(folder, device="cpu")
    assert cnb.models.families.family(bridge) == "vit"
    with torch.no_grad():
        assert (bridge(test.images, return_type="logits") - logits).abs().max() < 1e-5


def test_the_command_line_trains_and_names_bad_input(data_dir, tmp_path, capsys):
    from causal_nb.__main__ import main

    out = tmp_path / "cli"
    assert main(["vit", "train", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out), "--val-size", "16",
                 "--batch-size", "64", "--no-progress"]) == 0
    assert (out / "model" / "model.safetensors").exists() and "test top-1" in capsys.readouterr().out
    assert main(["vit", "train", "--epochs", "1", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "data_dir" in err
    assert main(["vit", "train", "--epochs", "2", "--data-dir", str(data_dir), "--out", str(out), "--val-size", "16",
                 "--batch-size", "64", "--resume"]) == 1
    assert "settings differ" in capsys.readouterr().err


def test_a_further_phase_starts_from_the_earlier_weights_and_lists_both(data_dir, tmp_path):
    from transformers import ViTForImageClassification

    first = train_vit(tmp_path / "one", config(epochs=1), data_dir=data_dir, progress=False)
    folder = tmp_path / "one" / "model"
    # lr 0 in phase 2: the weights must come out exactly as phase 1 left them
    second = train_vit(tmp_path / "two", config(epochs=1, lr=1e-12, weight_decay=0.0, init_from=str(folder)),
                       data_dir=data_dir, progress=False)
    a = ViTForImageClassification.from_pretrained(folder).state_dict()
    b = ViTForImageClassification.from_pretrained(tmp_path / "two" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)
    assert [p["test_top1"] for p in second["phases"]] == [first["test_top1"], second["test_top1"]]
    assert "--init-from" in second["training"]["command"] and "phase 2" in (tmp_path / "two" / "model" / "README.md").read_text()
    with pytest.raises(TrainVitError, match="has no config.json"):
        train_vit(tmp_path / "bad", config(init_from=str(tmp_path)), data_dir=data_dir, progress=False)
    other = dict(TINY, d_model=8)
    with pytest.raises(TrainVitError, match="do not fit this run's shape"):
        train_vit(tmp_path / "bad", config(init_from=str(folder), spec=other), data_dir=data_dir, progress=False)


def test_a_device_that_is_not_there_is_refused_with_the_fix(data_dir, tmp_path, monkeypatch):
    with pytest.raises(TrainVitError, match="not a torch device"):
        train_vit(tmp_path / "d", config(epochs=1), data_dir=data_dir, progress=False, device="gpu0")
    with pytest.raises(TrainVitError, match="only cpu and cuda"):
        train_vit(tmp_path / "d", config(epochs=1), data_dir=data_dir, progress=False, device="meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainVitError, match="no CUDA device.*--device cpu"):
        train_vit(tmp_path / "d", config(epochs=1), data_dir=data_dir, progress=False, device="cuda")
    card = train_vit(tmp_path / "c", config(epochs=1), data_dir=data_dir, progress=False, device="cpu")
    assert card["training"]["device"] == "cpu" and "--device" not in card["training"]["command"]


@pytest.mark.gpu
def test_a_cuda_run_sees_the_cpu_runs_batches(data_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cpu = train_vit(tmp_path / "cpu", config(epochs=2, augment=True), data_dir=data_dir, progress=False)
    gpu = train_vit(tmp_path / "gpu", config(epochs=2, augment=True), data_dir=data_dir, progress=False, device="cuda")
    # the same data order and augmentation: the losses agree to float rounding, not bit for bit
    assert [h["train_loss"] for h in gpu["history"]] == pytest.approx([h["train_loss"] for h in cpu["history"]],
                                                                      rel=1e-3)
    assert gpu["training"]["device"].startswith("cuda") and "--device cuda" in gpu["training"]["command"]


def test_the_command_line_trains_another_shape_and_refuses_impossible_ones(data_dir, tmp_path, capsys):
    from transformers import ViTForImageClassification

    from causal_nb.__main__ import main

    out = tmp_path / "shape"
    shape = ["--n-layers", "1", "--d-model", "24", "--n-heads", "3", "--d-mlp", "40", "--patch-size", "7"]
    assert main(["vit", "train", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out), "--val-size", "16",
                 "--batch-size", "64", "--weight-decay", "0.2", "--no-progress", *shape]) == 0
    cfg = ViTForImageClassification.from_pretrained(out / "model").config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers,
            cfg.patch_size) == (24, 3, 40, 1, 7)
    card = json.loads((out / "model" / "card.json").read_text())
    assert card["shape"]["d_model"] == 24 and card["training"]["weight_decay"] == 0.2
    assert " ".join(shape) in card["training"]["command"] and "--weight-decay 0.2" in card["training"]["command"]
    assert "d_model 24" in card["description"] and "--d-model 24" in card["why"]
    capsys.readouterr()
    for bad, says in ((["--d-model", "30", "--n-heads", "4"], "not divisible by --n-heads 4"),
                      (["--patch-size", "5"], "does not tile"), (["--n-layers", "0"], "positive integer"),
                      (["--n-layers", "1", "--ship"], "set VIT_SPECS")):
        assert main(["vit", "train", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(tmp_path / "bad"),
                     "--val-size", "16", "--no-progress", *bad]) == 1
        assert says in capsys.readouterr().err, bad
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()  # refused before any training
