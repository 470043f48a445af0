"""The ViT head views and explorer against the plain Hugging Face ``ViTForImageClassification``
driven by hand: heads zeroed (or set to their mean) at the input of the attention output
projection, class probabilities from its logits, the CLS attention map from its own eager
attention weights (``output_attentions=True``); the explorer's callbacks, on the dense and a
physically pruned ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.notebook.image_views import cls_attention, image_head_effect, image_head_means
from causal_nb.zoo.tiny import make_tiny_vit

D, HEADS, N_LAYERS = 32, 4, 2
DH = D // HEADS
g = torch.Generator().manual_seed(4)
IMAGES, LABELS = torch.randn(5, 1, 28, 28, generator=g), torch.randint(0, 10, (5,), generator=g)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny-vit", n_layers=N_LAYERS, d_model=D, n_heads=HEADS,
                         d_mlp=64, seed=7)


@pytest.fixture(scope="module")
def vit(folder):
    return cnb.load_model(folder, device="cpu")


@pytest.fixture(scope="module")
def ref(folder):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()


def hf_probs(ref, image, heads=(), fill=None):
    """Class probabilities of the plain model with ``heads`` replaced (zero, or ``fill[layer]`` [d])."""
    handles = []
    for la in {a for a, _ in heads}:
        cols = [h * DH + j for a, h in heads if a == la for j in range(DH)]

        def pre(m, args, cols=cols, la=la):
            x = args[0].clone()
            x[..., cols] = 0 if fill is None else fill[la][cols]
            return (x, *args[1:])
        handles.append(ref.vit.layers[la].attention.o_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return torch.softmax(ref(pixel_values=image).logits.double(), -1)[0].numpy()
    finally:
        for h in handles:
            h.remove()


def hf_means(ref, images):
    """Each layer's attention output projection input averaged over images and tokens, [d]."""
    got, handles = {}, []
    for la, layer in enumerate(ref.vit.layers):
        def keep(m, args, la=la):
            got[la] = args[0].double().mean((0, 1)).float()
        handles.append(layer.attention.o_proj.register_forward_pre_hook(keep))
    with torch.no_grad():
        ref(pixel_values=images)
    for h in handles:
        h.remove()
    return got


def test_head_effect_equals_hf_with_the_heads_replaced(vit, ref):
    image = IMAGES[1:2]
    heads = [(0, 1), (1, 0), (1, 3)]
    e = image_head_effect(vit, image, heads, label=int(LABELS[1]))
    want_base, want_new = hf_probs(ref, image), hf_probs(ref, image, heads)
    assert np.abs(e.base - want_base).max() < 1e-5 and np.abs(e.new - want_new).max() < 1e-5
    assert np.abs(want_new - want_base).max() > 1e-3  # the heads matter (the check can fail)
    kl = float(np.sum(want_base * (np.log(want_base) - np.log(want_new))))
    assert e.kl == pytest.approx(kl, abs=1e-6)
    assert e.label_change == pytest.approx(want_new[LABELS[1]] - want_base[LABELS[1]], abs=1e-5)
    frame = e.frame()
    assert list(frame.columns) == ["class", "base", "new", "change"] and len(frame) == 10

    means = image_head_means(vit, IMAGES)
    fill = hf_means(ref, IMAGES)
    assert torch.allclose(means.reshape(N_LAYERS, -1), torch.stack([fill[0], fill[1]]), atol=1e-5)
    e = image_head_effect(vit, image, heads, kind="mean", means=means)
    assert np.abs(e.new - hf_probs(ref, image, heads, fill)).max() < 1e-5


def test_cls_attention_equals_hf_attention_weights(vit, ref):
    image = IMAGES[2:3]
    with torch.no_grad():
        att = ref(pixel_values=image, output_attentions=True).attentions
    for layer in range(N_LAYERS):
        want = att[layer][0, :, 0, 1:].reshape(HEADS, 4, 4)  # 28x28 images in 7x7 patches: a 4x4 grid
        assert torch.allclose(cls_attention(vit, image, layer), want, atol=1e-6)
    e = image_head_effect(vit, image, [], layer=0)
    assert np.allclose(e.attention, att[0][0, :, 0, 1:].mean(0).reshape(4, 4).numpy(), atol=1e-6)
    assert np.allclose(e.attention.sum(), att[0][0, :, 0, 1:].sum(-1).mean().item(), atol=1e-6)


def test_the_explorer_drives_like_its_buttons(vit, ref):
    task = cnb.ImageClassificationTask(IMAGES, LABELS)
    ex = cnb.widgets.ImageHeadExplorer(vit, task, class_names=[f"c{i}" for i in range(10)])
    assert len(ex.buttons) == N_LAYERS * HEADS
    assert np.allclose(ex.effect.new, ex.effect.base)
    ex.set_image(3)
    e = ex.toggle(1, 2)
    assert e.heads == ((1, 2),) and np.abs(e.new - hf_probs(ref, IMAGES[3:4], [(1, 2)])).max() < 1e-5
    assert f"{e.kl:.4f}" in ex.summary.value and "label c" in ex.summary.value
    e = ex.set_kind("mean")
    assert np.abs(e.new - hf_probs(ref, IMAGES[3:4], [(1, 2)], hf_means(ref, IMAGES))).max() < 1e-5
    assert ex.set_layer(0).layer == 0 and ex.toggle(1, 2).heads == ()
    assert ex.prob_fig.data[1].y == tuple(np.round(ex.effect.new, 6).tolist())
    with pytest.raises(ValueError, match="layer 0 has heads 0..3"):
        ex.toggle(0, 9)
    with pytest.raises(ValueError, match="unknown intervention 'patch'"):
        ex.set_kind("patch")
    with pytest.raises(ValueError, match="image index 7 out of range"):
        ex.set_image(7)
    with pytest.raises(ValueError, match="class_names has 3 names, the model has 10 classes"):
        cnb.widgets.ImageHeadExplorer(vit, task, class_names=["a", "b", "c"])


def test_the_explorer_on_a_physically_pruned_vit(vit, ref):
    task = cnb.ImageClassificationTask(IMAGES, LABELS)
    pruned = cnb.prune_units(vit, heads={0: [0, 3]}, task=task, physical=True)
    ex = cnb.widgets.ImageHeadExplorer(pruned, task)
    assert sorted(ex.buttons) == [(0, 0), (0, 1), *((1, h) for h in range(HEADS))]
    e = ex.toggle(1, 1)
    # the pruned model's heads 0, 1 of layer 0 are the dense model's 1, 2
    assert np.abs(e.new - hf_probs(ref, IMAGES[:1], [(0, 0), (0, 3), (1, 1)])).max() < 1e-5
    with pytest.raises(ValueError, match="physically pruned"):
        ex.toggle(0, 2)
