"""Recovery fine-tuning of pruned ViTs (``zoo.train_vit.finetune_vit``, ``optimize_vit(finetune_epochs=...)``,
``vit optimize --finetune-epochs``) on a tiny random ViT and small idx files the tests write, read
back through the plain Hugging Face model:

- a few steps lower the training loss (cross-entropy computed here with torch on the HF model),
  keep every pruned shape, and the recorded before/after validation top-1 is the HF model's;
- two runs give bit-equal weights; the in-memory bridge carries the fine-tuned weights;
- bad input (negative epochs, no training split, the validation split as training data) is named,
  on the command line too.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_vit_train import write_idx

import causal_nb as cnb
from causal_nb.zoo.tiny import make_tiny_vit
from causal_nb.zoo.train_vit import FinetuneConfig, TrainVitError, finetune_vit

FT = FinetuneConfig(epochs=1, steps=8, batch_size=16, lr=1e-2, warmup=1, augment=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), n_train=160)


@pytest.fixture(scope="module")
def splits(data_dir):
    return (cnb.load_fashion_mnist("train", data_dir, val_size=32),
            cnb.load_fashion_mnist("val", data_dir, val_size=32))


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny", n_layers=2, d_model=32, n_heads=4, d_mlp=64,
                         seed=1, init_std=0.05)


def hf_of(folder):
    """The Hugging Face model of a folder (a pruned one rebuilt with its per-layer shapes)."""
    from transformers import ViTForImageClassification

    if "causal_nb_pruned" in json.loads((folder / "config.json").read_text()):
        return cnb.models.hf.load_pruned_hf(folder).eval()
    return ViTForImageClassification.from_pretrained(folder).eval()


@torch.no_grad()
def ce_and_top1(hf, data):
    logits = hf(pixel_values=data.images).logits
    return (float(torch.nn.functional.cross_entropy(logits, data.labels)),
            round(float((logits.argmax(-1) == data.labels).double().mean()), 5))


def prune_and_tune(vit_folder, splits, out, **kw):
    train, val = splits
    model = cnb.load_model(vit_folder, device="cpu")
    task = cnb.ImageClassificationTask(val.images, val.labels)
    return cnb.optimize_vit(model, task, keep_ratios=[0.5], scores=["magnitude"], out=out, base="tiny",
                            train_data=train, val_data=val, finetune_config=FT, **kw)


def test_fine_tuning_lowers_the_training_loss_and_keeps_the_pruned_shapes(vit_folder, splits, tmp_path):
    train, val = splits
    plain = prune_and_tune(vit_folder, splits, tmp_path / "plain")["tiny_keep_0.5_magnitude"]
    tuned = prune_and_tune(vit_folder, splits, tmp_path / "tuned", finetune_epochs=3,
                           finetune_steps=8)["tiny_keep_0.5_magnitude"]
    a, b = hf_of(plain), hf_of(tuned)
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    assert sum(v.numel() for v in sa.values()) < sum(v.numel() for v in hf_of(vit_folder).state_dict().values())
    assert json.loads((tuned / "config.json").read_text())["causal_nb_pruned"] == json.loads(
        (plain / "config.json").read_text())["causal_nb_pruned"]
    loss_a, loss_b = ce_and_top1(a, train)[0], ce_and_top1(b, train)[0]
    assert loss_b < 0.9 * loss_a, (loss_a, loss_b)
    rec = json.loads((tuned / "finetune.json").read_text())
    assert rec["val_top1_before"] == ce_and_top1(a, val)[1] and rec["val_top1_after"] == ce_and_top1(b, val)[1]
    assert rec["settings"]["epochs"] == 3 and rec["steps_per_epoch"] == 8 and len(rec["train_loss"]) == 3
    assert rec["n_train"] == len(train) == 128 and rec["n_val"] == len(val) == 32
    assert not (plain / "finetune.json").exists()


def test_two_runs_are_bit_equal_and_the_bridge_carries_the_weights(vit_folder, splits, tmp_path):
    one = prune_and_tune(vit_folder, splits, tmp_path / "one", finetune_epochs=1)["tiny_keep_0.5_magnitude"]
    two = prune_and_tune(vit_folder, splits, tmp_path / "two", finetune_epochs=1)["tiny_keep_0.5_magnitude"]
    sa, sb = hf_of(one).state_dict(), hf_of(two).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    bridge = prune_and_tune(vit_folder, splits, None, finetune_epochs=1)["tiny_keep_0.5_magnitude"]
    images = splits[1].images[:8]
    with torch.no_grad():
        got = bridge(images, return_type="logits")
        assert (got - hf_of(one)(pixel_values=images).logits).abs().max() < 1e-5
    assert bridge.causal_nb_finetune["val_top1_after"] == json.loads((one / "finetune.json").read_text())[
        "val_top1_after"]


def test_finetune_vit_on_a_plain_hf_model_and_its_bad_settings(vit_folder, splits):
    train, _ = splits
    hf = hf_of(vit_folder)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    rec = finetune_vit(hf, train, None, FT, progress=False)
    assert rec["val_top1_before"] is None and any(not torch.equal(before[k], v) for k, v in hf.state_dict().items())
    for bad, match in ((dict(epochs=0), "epochs=0 must be an integer of at least 1"),
                       (dict(steps=0), "steps=0 must be a positive integer"),
                       (dict(lr=-1.0), "fine-tuning lr=-1.0 must be positive"),
                       (dict(weight_decay=-0.5), "fine-tuning weight_decay=-0.5 must be at least 0")):
        with pytest.raises(TrainVitError, match=match):
            finetune_vit(hf, train, None, FinetuneConfig(**bad), progress=False)


def test_bad_requests_are_named(vit_folder, splits):
    train, val = splits
    model = cnb.load_model(vit_folder, device="cpu")
    task = cnb.ImageClassificationTask(val.images, val.labels)
    run = dict(keep_ratios=[0.5], scores=["magnitude"])
    with pytest.raises(ValueError, match=r"finetune_epochs=-1 must be a whole number"):
        cnb.optimize_vit(model, task, **run, finetune_epochs=-1, train_data=train)
    with pytest.raises(ValueError, match=r"needs the training split: pass train_data="):
        cnb.optimize_vit(model, task, **run, finetune_epochs=1)
    with pytest.raises(ValueError, match=r"train_data is the 'val' split"):
        cnb.optimize_vit(model, task, **run, finetune_epochs=1, train_data=val)
    with pytest.raises(ValueError, match=r"finetune_steps=0 must be a positive"):
        cnb.optimize_vit(model, task, **run, finetune_epochs=1, finetune_steps=0, train_data=train)


def test_the_command_line_fine_tunes_and_names_bad_input(vit_folder, data_dir, tmp_path, capsys):
    from causal_nb.__main__ import main

    out = tmp_path / "opt"
    base = ["vit", "optimize", "--model", str(vit_folder), "--data-dir", str(data_dir), "--out", str(out),
            "--keep-ratios", "0.5", "--scores", "magnitude", "--n-images", "16", "--val-size", "32", "--no-progress"]
    assert main([*base, "--finetune-epochs", "1", "--finetune-steps", "2", "--finetune-batch-size", "8"]) == 0
    rec = json.loads((out / "tiny_keep_0.5_magnitude" / "finetune.json").read_text())
    assert rec["steps_per_epoch"] == 2 and rec["settings"]["batch_size"] == 8
    assert rec["n_train"] == 128 and rec["n_val"] == 32  # the training split; before/after on all validation images
    assert main([*base, "--finetune-epochs", "-2"]) == 1
    assert "--finetune-epochs -2 is negative" in capsys.readouterr().err


def test_recovery_loss_distils_by_the_hand_formula():
    import numpy as np

    from causal_nb.zoo.train_vit import recovery_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.randn(5, 10, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 2, 2])

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    sn, tn, T = s.numpy(), t.numpy(), 3.0
    ce = -np.log(softmax(sn)[np.arange(5), y.numpy()]).mean()
    p, q = softmax(tn / T), softmax(sn / T)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    assert recovery_loss(s, y).item() == pytest.approx(ce, rel=1e-12)
    assert recovery_loss(s, y, t, 0.25, T).item() == pytest.approx(0.75 * ce + 0.25 * T * T * kl, rel=1e-12)
    assert recovery_loss(s, y, s, 1.0, T).item() == pytest.approx(0.0, abs=1e-12)  # a student equal to its teacher


def test_distillation_fine_tunes_towards_the_teacher_and_names_bad_settings(vit_folder, splits):
    import copy

    train, _ = splits
    teacher = hf_of(vit_folder)
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a student that disagrees with its teacher
        student.classifier.weight.mul_(-1)
    x = train.images[:64]

    def kl():
        with torch.no_grad():
            return torch.nn.functional.kl_div(torch.log_softmax(student(pixel_values=x).logits, -1),
                                              torch.log_softmax(teacher(pixel_values=x).logits, -1),
                                              log_target=True, reduction="batchmean").item()

    before, ref = kl(), {k: v.clone() for k, v in teacher.state_dict().items()}
    finetune_vit(student, train, None, FinetuneConfig(**{**FT.__dict__, "distill": 1.0}), progress=False,
                 teacher=teacher)
    assert kl() < 0.5 * before
    assert all(torch.equal(ref[k], v) for k, v in teacher.state_dict().items())  # the teacher is not trained
    with pytest.raises(TrainVitError, match="needs teacher="):
        finetune_vit(student, train, None, FinetuneConfig(distill=0.5), progress=False)
    with pytest.raises(TrainVitError, match="only with distill > 0"):
        finetune_vit(student, train, None, FT, progress=False, teacher=teacher)
    with pytest.raises(TrainVitError, match=r"distill=1.5 must be in \[0, 1\]"):
        finetune_vit(student, train, None, FinetuneConfig(distill=1.5), progress=False, teacher=teacher)
