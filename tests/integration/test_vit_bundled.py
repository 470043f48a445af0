"""The bundled ViT (``vit-fashion-mnist``) on the real Fashion-MNIST test split: it loads as the
engine's ViT bridge, reaches the test accuracy its card states (checked with the plain Hugging
Face model), and physically pruned equals masked on a few hundred test images.

Skipped cleanly when Fashion-MNIST is absent (``sudo apt-get install dataset-fashion-mnist``).
The model itself ships in the package, so its absence is a failure.
"""

from __future__ import annotations

import pytest
import torch

import causal_nb as cnb
from causal_nb.data.images import ImageDataError
from causal_nb.zoo import MODELS_DIR, VIT_SPECS

NAME = "vit-fashion-mnist"


@pytest.fixture(scope="module")
def test_split():
    try:
        return cnb.load_fashion_mnist("test")
    except ImageDataError as e:
        pytest.skip(f"Fashion-MNIST absent: {e}")


@pytest.fixture(scope="module")
def vit():
    if NAME not in cnb.list_models():
        pytest.fail(f"{NAME} is missing from causal_nb/zoo/models (python -m causal_nb vit train --ship)")
    return cnb.load_model(NAME, device="cpu")


def test_it_loads_as_the_vit_bridge_the_engine_reads(vit):
    from transformer_lens.model_bridge import TransformerBridge

    card = cnb.model_card(NAME)
    assert isinstance(vit, TransformerBridge) and cnb.models.families.family(vit) == "vit"
    assert (vit.cfg.n_layers, vit.cfg.d_model, vit.cfg.n_heads) == (card["shape"]["n_layers"],
                                                                    card["shape"]["d_model"], card["shape"]["n_heads"])
    spec = VIT_SPECS[NAME]  # the zoo's spec (what `vit train` builds by default) is the shipped shape
    assert {k: spec[k] for k in card["shape"]} == card["shape"]
    row = cnb.list_models(cards=True).set_index("model").loc[NAME]
    assert row.test_top1 == card["test_top1"]


def test_test_accuracy_matches_the_card(vit, test_split):
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification.from_pretrained(MODELS_DIR / NAME).eval()
    with torch.no_grad():
        pred = torch.cat([hf(pixel_values=test_split.images[i:i + 1000]).logits.argmax(-1)
                          for i in range(0, len(test_split), 1000)])
    acc = int((pred == test_split.labels).sum()) / len(test_split)
    card = cnb.model_card(NAME)
    assert acc >= card["test_top1"] - 0.002, (acc, card["test_top1"])
    assert acc >= 0.90, acc  # issue 13's target for the bundled baseline, measured here with plain HF
    ev = cnb.evaluate_vit_models([vit], test_split.head(1000), batch_size=500)
    want = int((pred[:1000] == test_split.labels[:1000]).sum()) / 1000
    assert ev.table.top1[0] == pytest.approx(want, abs=1e-9)


def test_physical_equals_masked_on_test_images(vit, test_split):
    imgs = test_split.head(300)
    task = cnb.ImageClassificationTask(imgs.images, imgs.labels)
    scores = [cnb.score(vit, task=task, method="magnitude", unit=u) for u in ("head", "neuron")]
    masked = cnb.prune(vit, scores, 0.5, physical=False, task=task)
    phys = cnb.prune(vit, scores, 0.5, physical=True, task=task)
    with torch.no_grad():
        a = masked(imgs.images, return_type="logits")
        b = phys(imgs.images, return_type="logits")
    assert ((a - b).abs().max() / a.abs().max()) < 1e-5
    n = lambda m: sum(p.numel() for p in cnb.models.hf.plain_hf(m, share=True).parameters())  # noqa: E731
    assert n(phys) < n(masked)
