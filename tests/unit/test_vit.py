"""ViT as a family: ``ImageClassificationTask`` on tiny random-config ``ViTForImageClassification``
folders, checked against the plain Hugging Face model driven by hand (forward hooks on its own
modules, never through the kit):

- ``ablate`` (zero, mean over reference images) and ``patch`` (clean into corrupted images) of
  heads, neurons, MLPs, attention layers and blocks equal one hooked Hugging Face forward per unit;
- ``score``: ablation = the ablation table's damage, magnitude = the Hugging Face weight norms,
  attribution tracks exact ablation;
- pruning: masked = the Hugging Face model with the units zeroed, physical = masked, smaller by
  exactly the removed weights, saved and reloaded through ``load_model`` with per-layer head counts;
- bad input is named.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.models.families import UnsupportedModelError
from causal_nb.zoo.tiny import make_tiny_vit

D, HEADS, D_MLP, N_LAYERS, DH = 32, 4, 64, 2, 8
N_IMAGES = 6


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny-vit", n_layers=N_LAYERS, d_model=D, n_heads=HEADS,
                         d_mlp=D_MLP, seed=3)


@pytest.fixture(scope="module")
def vit(vit_folder):
    return cnb.load_model(vit_folder, device="cpu")


@pytest.fixture(scope="module")
def ref(vit_folder):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(vit_folder).eval()


def images_of(seed, n=N_IMAGES):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


IMAGES, LABELS = images_of(0)
CORRUPTED, _ = images_of(1)
REFERENCE, _ = images_of(2, n=5)


@pytest.fixture(scope="module")
def task():
    return cnb.ImageClassificationTask(IMAGES, LABELS)


# --- the plain Hugging Face reference -------------------------------------------------------

def sites(ref, unit, layer):
    """(module, "pre" = its input | "post" = its output) a unit lives at, written out by hand."""
    blk = ref.vit.layers[layer]
    return {"head": [(blk.attention.o_proj, "pre")], "neuron": [(blk.mlp.fc2, "pre")], "mlp": [(blk.mlp, "post")],
            "attn": [(blk.attention, "post")], "block": [(blk.attention, "post"), (blk.mlp, "post")]}[unit]


def cols(unit, i):
    return slice(i * DH, (i + 1) * DH) if unit == "head" else [i] if unit == "neuron" else slice(None)


@contextlib.contextmanager
def hooked(edits):
    """edits: (module, mode, fn(x) -> x) with x the module's input (pre) or first output (post)."""
    handles = []
    for mod, mode, fn in edits:
        if mode == "pre":
            handles.append(mod.register_forward_pre_hook(lambda m, a, fn=fn: (fn(a[0].clone()), *a[1:])))
        else:
            def post(m, a, out, fn=fn):
                if isinstance(out, tuple):
                    return (fn(out[0].clone()), *out[1:])
                return fn(out.clone())
            handles.append(mod.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def record(ref, images, targets):
    """The activation at each (module, mode), from one plain forward."""
    got = {}

    def keeper(key):
        def fn(x):
            got[key] = x.detach().clone()
            return x
        return fn

    with hooked([(m, mode, keeper((id(m), mode))) for m, mode in targets]), torch.no_grad():
        ref(pixel_values=images)
    return got


def setter(value, c, positions=None):
    """Replace x[:, positions, c] with value (zero: None; a mean: [d]; a source run: [batch, pos, d])."""
    pos = slice(None) if positions is None else list(positions)

    def fn(x):
        if value is None:
            x[:, pos, c] = 0
        elif value.dim() == 1:
            x[:, pos, c] = value[c]
        else:
            x[:, pos, c] = value[:, pos][..., c]
        return x
    return fn


def logits_of(ref, images, edits=()):
    with hooked(edits), torch.no_grad():
        return ref(pixel_values=images).logits


def label_logprob(logits, labels=LABELS):
    return torch.log_softmax(logits.double(), -1)[torch.arange(len(labels)), labels]


def hf_loop(ref, unit, kind, n_per_layer, images=IMAGES, source_images=None, positions=None):
    """One hooked Hugging Face forward per unit; label log-prob per image [unit, image]."""
    targets = [s for layer in range(N_LAYERS) for s in sites(ref, unit, layer)]
    if kind == "mean":
        acts = record(ref, REFERENCE, targets)
        fill = {k: v.mean((0, 1)) for k, v in acts.items()}
    elif kind == "patch":
        fill = record(ref, source_images, targets)
    rows = []
    for layer in range(N_LAYERS):
        for i in range(n_per_layer):
            edits = [(m, mode, setter(None if kind == "zero" else fill[(id(m), mode)], cols(unit, i), positions))
                     for m, mode in sites(ref, unit, layer)]
            rows.append(label_logprob(logits_of(ref, images, edits)))
    return torch.stack(rows).numpy()


COUNTS = [("head", HEADS), ("neuron", D_MLP), ("mlp", 1), ("attn", 1), ("block", 1)]


# --- the bridge and the task read the model as Hugging Face does -----------------------------

def test_the_bridge_boots_with_vit_hooks_and_the_task_reads_hf_logits(vit, ref, task):
    assert cnb.models.families.family(vit) == "vit" and vit.tokenizer is None
    with torch.no_grad():
        logits, cache = vit.run_with_cache(IMAGES)
    want = logits_of(ref, IMAGES)
    assert logits.shape == (N_IMAGES, 10) and (logits - want).abs().max() < 1e-5
    n_pos = 1 + (28 // 7) ** 2
    for name, shape in {"blocks.1.attn.hook_z": (N_IMAGES, n_pos, HEADS, DH),
                        "blocks.1.mlp.hook_post": (N_IMAGES, n_pos, D_MLP),
                        "blocks.0.hook_resid_pre": (N_IMAGES, n_pos, D)}.items():
        assert tuple(cache[name].shape) == shape, name
    df = cnb.ablate(vit, task=task, unit="mlp", layers=[0], metric="label_logprob")
    assert np.allclose(df.attrs["baseline_per_prompt"], label_logprob(want).numpy(), atol=1e-5)
    # the engine's readout from the cached residual equals the full forward
    from causal_nb.engine.replay import capture, run_from

    tb, scored = task.prepare(vit), task.scoring(vit, task.prepare(vit))
    cap = capture(vit, tb.tokens, task=task, scored=scored)
    with torch.no_grad():
        for start in range(N_LAYERS):
            assert (run_from(vit, cap, start, 1, None, task=task, scored=scored) - cap.logits).abs().max() < 1e-5
            assert (run_from(vit, cap, start, 3, None, task=task, scored=scored.repeat(3))
                    - cap.logits.repeat(3, 1)).abs().max() < 1e-5


def test_the_fast_paths_hold_on_pre_ln_vit_blocks(vit, task):
    from causal_nb.engine.replay import _head_fast_path, _mlp_fast_path, capture

    tb = task.prepare(vit)
    hooks = [f"blocks.{x}.{h}" for x in range(N_LAYERS) for h in ("attn.hook_z", "mlp.hook_post")]
    cap = capture(vit, tb.tokens, hooks, task=task, scored=task.scoring(vit, tb))
    assert cap.fast_paths
    for layer in range(N_LAYERS):
        assert _head_fast_path(vit, cap, layer) and _mlp_fast_path(vit, cap, layer, neurons=True)


# --- exactness against the Hugging Face loop ---------------------------------------------------

@pytest.mark.parametrize("unit,count", COUNTS)
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablate_equals_a_plain_hf_hook_loop(vit, ref, task, unit, count, kind):
    df = cnb.ablate(vit, task=task, unit=unit, kind=kind, metric="label_logprob",
                    reference=REFERENCE if kind == "mean" else None)
    want = hf_loop(ref, unit, kind, count)
    per = df.attrs["per_prompt"].to_numpy()
    assert per.shape == (N_LAYERS * count, N_IMAGES) and list(df.attrs["per_prompt"].columns)[0] == "img0"
    assert np.abs(per - want).max() < 1e-5
    clean = label_logprob(logits_of(ref, IMAGES)).numpy()
    assert np.abs(want - clean).max() > 1e-3  # the ablations change the predictions (the check can fail)


@pytest.mark.parametrize("unit,count", [("head", HEADS), ("neuron", D_MLP), ("block", 1)])
def test_patch_equals_a_plain_hf_hook_loop(vit, ref, task, unit, count):
    df = cnb.patch(vit, corrupted=CORRUPTED, task=task, unit=unit)
    want = hf_loop(ref, unit, "patch", count, images=CORRUPTED, source_images=IMAGES)  # denoise: clean into corrupted
    assert df.attrs["metric"] == "label_logprob"
    assert np.abs(df.attrs["per_prompt"].to_numpy() - want).max() < 1e-5
    assert np.allclose(df.attrs["clean_per_prompt"], label_logprob(logits_of(ref, IMAGES)).numpy(), atol=1e-5)
    assert np.allclose(df.attrs["corrupted_per_prompt"], label_logprob(logits_of(ref, CORRUPTED)).numpy(), atol=1e-5)
    noise = cnb.patch(vit, None, CORRUPTED, task=task, unit=unit, direction="noise")
    want = hf_loop(ref, unit, "patch", count, images=IMAGES, source_images=CORRUPTED)
    assert np.abs(noise.attrs["per_prompt"].to_numpy() - want).max() < 1e-5


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_patching_equals_hf_autograd(vit, ref, task, direction):
    """First order by hand: metric at the base run + (source - base) . d metric / d (o_proj input)."""
    base, source = (CORRUPTED, IMAGES) if direction == "denoise" else (IMAGES, CORRUPTED)
    mods = [blk.attention.o_proj for blk in ref.vit.layers]
    src = record(ref, source, [(m, "pre") for m in mods])
    got = {}

    def keep(i):
        def fn(x):
            x.requires_grad_(True)
            got[i] = x
            return x
        return fn

    with hooked([(m, "pre", keep(i)) for i, m in enumerate(mods)]):
        vals = label_logprob(ref(pixel_values=base).logits)
    grads = torch.autograd.grad(vals.sum(), [got[i] for i in range(N_LAYERS)])
    want = []
    for i, m in enumerate(mods):
        prod = ((src[(id(m), "pre")] - got[i].detach()) * grads[i]).double()  # [image, pos, heads * d_head]
        want += [vals.detach() + prod[..., cols("head", h)].sum((1, 2)) for h in range(HEADS)]
    df = cnb.patch(vit, corrupted=CORRUPTED, task=task, unit="head", method="attribution", direction=direction)
    assert df.attrs["method"] == "attribution" and df.attrs["task"] == repr(task)
    assert np.abs(df.attrs["per_prompt"].to_numpy() - torch.stack(want).numpy()).max() < 1e-5
    exact = cnb.patch(vit, corrupted=CORRUPTED, task=task, unit="head", direction=direction)
    assert np.abs(exact["value"].to_numpy() - df["value"].to_numpy()).max() > 1e-6  # an estimate, not the exact run


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_eap_ig_equals_hf_integrated_gradients(vit, ref, task, direction):
    """EAP-IG by hand: the embeddings' output moved along the line from the base image's to the
    source image's, d metric / d (o_proj input) averaged over the points j / steps, times
    (source - base) of each head's slice."""
    steps = 3
    base, source = (CORRUPTED, IMAGES) if direction == "denoise" else (IMAGES, CORRUPTED)
    mods = [blk.attention.o_proj for blk in ref.vit.layers]
    src, bas = (record(ref, x, [(m, "pre") for m in mods]) for x in (source, base))
    emb = {}
    for name, x in (("lo", base), ("hi", source)):
        with torch.no_grad():
            emb[name] = ref.vit.embeddings(x)
    total = [0.0] * N_LAYERS
    for j in range(1, steps + 1):
        got = {}

        def keep(i, got=got):
            def fn(x):
                x.requires_grad_(True)
                got[i] = x
                return x
            return fn

        point = emb["lo"] + j / steps * (emb["hi"] - emb["lo"])
        h = ref.vit.embeddings.register_forward_hook(lambda m, a, out, point=point: point.clone())
        try:
            with hooked([(m, "pre", keep(i)) for i, m in enumerate(mods)]):
                vals = label_logprob(ref(pixel_values=base).logits)
            grads = torch.autograd.grad(vals.sum(), [got[i] for i in range(N_LAYERS)])
        finally:
            h.remove()
        total = [t + g for t, g in zip(total, grads, strict=True)]
    base_val = label_logprob(logits_of(ref, base))
    want = []
    for i, m in enumerate(mods):
        prod = ((src[(id(m), "pre")] - bas[(id(m), "pre")]) * total[i] / steps).double()
        want += [base_val + prod[..., cols("head", hd)].sum((1, 2)) for hd in range(HEADS)]
    df = cnb.patch(vit, corrupted=CORRUPTED, task=task, unit="head", method="eap-ig", direction=direction,
                   steps=steps)
    assert df.attrs["method"] == "eap-ig" and df.attrs["steps"] == steps
    assert np.abs(df.attrs["per_prompt"].to_numpy() - torch.stack(want).numpy()).max() < 1e-5
    attr = cnb.patch(vit, corrupted=CORRUPTED, task=task, unit="head", method="attribution", direction=direction)
    assert np.abs(attr["value"].to_numpy() - df["value"].to_numpy()).max() > 1e-6  # not the one-point estimate


def test_heads_at_the_cls_position_and_the_full_replay(vit, ref, task):
    df = cnb.ablate(vit, task=task, unit="head", positions=[0], metric="label_logprob")
    assert np.abs(df.attrs["per_prompt"].to_numpy() - hf_loop(ref, "head", "zero", HEADS, positions=[0])).max() < 1e-5
    slow = cnb.ImageClassificationTask(IMAGES, LABELS)
    slow.fast_paths = False  # whole blocks replayed: the same numbers as the fast paths
    for unit in ("head", "neuron"):
        a = cnb.ablate(vit, task=task, unit=unit, kind="mean", reference=REFERENCE)
        b = cnb.ablate(vit, task=slow, unit=unit, kind="mean", reference=REFERENCE)
        assert np.abs(a.attrs["per_prompt"].to_numpy() - b.attrs["per_prompt"].to_numpy()).max() < 1e-6


def test_kl_top1_and_accuracy_against_hf(vit, ref, task):
    clean = torch.log_softmax(logits_of(ref, IMAGES).double(), -1)
    blk = ref.vit.layers[1]
    lp = torch.log_softmax(logits_of(ref, IMAGES, [(blk.mlp, "post", setter(None, slice(None)))]).double(), -1)
    kl = (clean.exp() * (clean - lp)).sum(-1).numpy()
    got = {m: cnb.ablate(vit, task=task, unit="mlp", layers=[1], metric=m).attrs["per_prompt"].to_numpy()[0]
           for m in ("kl", "top1", "accuracy")}
    assert np.abs(got["kl"] - kl).max() < 1e-5 and kl.max() > 1e-3
    assert np.array_equal(got["top1"], (lp.argmax(-1) == clean.argmax(-1)).double().numpy())
    assert np.array_equal(got["accuracy"], (lp.argmax(-1) == LABELS).double().numpy())
    assert cnb.ablate(vit, task=task, unit="mlp", layers=[1]).attrs["metric"] == "kl"  # the ablation default


def test_resample_ablation_takes_another_images_activations(vit, ref, task):
    df = cnb.ablate(vit, task=task, unit="mlp", kind="resample", reference=CORRUPTED, metric="label_logprob")
    want = hf_loop(ref, "mlp", "patch", 1, images=IMAGES, source_images=CORRUPTED)
    assert np.abs(df.attrs["per_prompt"].to_numpy() - want).max() < 1e-5


# --- score ---------------------------------------------------------------------------------------

def test_score_methods(vit, ref, task):
    from scipy.stats import spearmanr

    exact = cnb.score(vit, task=task, method="ablation", unit="head", kind="zero")
    ab = cnb.ablate(vit, task=task, unit="head", kind="zero")
    assert np.allclose(exact.score, (ab.attrs["per_prompt"].to_numpy()
                                     - np.asarray(ab.attrs["baseline_per_prompt"])[None]).mean(1), atol=1e-9)
    mag = cnb.score(vit, task=task, method="magnitude", unit="head")
    want = []
    for blk in ref.vit.layers:
        att = blk.attention
        for h in range(HEADS):
            rows = slice(h * DH, (h + 1) * DH)
            want.append(sum(float(w[rows].detach().norm()) for w in (att.q_proj.weight, att.k_proj.weight, att.v_proj.weight))
                        + float(att.o_proj.weight[:, rows].detach().norm()))
    assert np.allclose(mag.score, want, rtol=1e-5)
    neur = cnb.score(vit, task=task, method="magnitude", unit="neuron")
    want = torch.cat([blk.mlp.fc1.weight.norm(dim=1) + blk.mlp.fc2.weight.norm(dim=0) for blk in ref.vit.layers])
    assert np.allclose(neur.score, want.detach().numpy(), rtol=1e-5)
    for unit, kind in (("head", "mean"), ("neuron", "zero")):
        est = cnb.score(vit, task=task, method="attribution", unit=unit, kind=kind)
        ex = cnb.score(vit, task=task, method="ablation", unit=unit, kind=kind, metric="loss")
        assert spearmanr(est.score, ex.score).statistic > 0.5, unit  # first-order vs exact loss increase
    tay = cnb.score(vit, task=task, method="taylor", unit="neuron")
    assert len(tay) == N_LAYERS * D_MLP and np.isfinite(tay.score).all()


# --- pruning ---------------------------------------------------------------------------------------

HEADS_OUT = {0: [1, 3], 1: [0]}
NEURONS_OUT = {0: list(range(0, 64, 3)), 1: [5, 6, 7, 40]}


def test_masked_pruning_equals_hf_zeroing_and_physical_equals_masked(vit, ref, task, tmp_path):
    masked = cnb.prune_units(vit, heads=HEADS_OUT, neurons=NEURONS_OUT, physical=False, task=task)
    edits = []
    for layer, hs in HEADS_OUT.items():
        blk = ref.vit.layers[layer]
        edits += [(blk.attention.o_proj, "pre", setter(None, cols("head", h))) for h in hs]
    for layer, ns in NEURONS_OUT.items():
        edits.append((ref.vit.layers[layer].mlp.fc2, "pre", setter(None, ns)))
    want = logits_of(ref, IMAGES, edits)
    with torch.no_grad():
        got_m = masked(IMAGES, return_type="logits")
    assert (got_m - want).abs().max() < 1e-5 and (want - logits_of(ref, IMAGES)).abs().max() > 1e-3
    phys = cnb.prune_units(vit, heads=HEADS_OUT, neurons=NEURONS_OUT, physical=True, task=task)
    with torch.no_grad():
        got_p = phys(IMAGES, return_type="logits")
        _, cache = phys.run_with_cache(IMAGES)
    assert (got_p - got_m).abs().max() / got_m.abs().max() < 1e-5
    assert [cache[f"blocks.{i}.attn.hook_z"].shape[2] for i in range(N_LAYERS)] == [2, 3]
    assert [cache[f"blocks.{i}.mlp.hook_post"].shape[2] for i in range(N_LAYERS)] == [64 - 22, 60]
    folder = cnb.save_pruned(phys, tmp_path / "pruned")
    from safetensors.torch import load_file

    n_saved = sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())
    n_dense = sum(p.numel() for p in ref.parameters())
    removed = 3 * (4 * DH * D + 3 * DH) + 26 * (2 * D + 1)  # q/k/v rows + biases, o columns; fc1 row + bias, fc2 column
    assert n_saved == n_dense - removed
    back = cnb.load_model(folder, device="cpu")
    with torch.no_grad():
        assert (back(IMAGES, return_type="logits") - got_p).abs().max() < 1e-6
    t = cnb.ImageClassificationTask(IMAGES, LABELS)
    # the analyses run on the reloaded, smaller model: ablating its kept head j equals ablating
    # the same original head in the masked model (already checked against Hugging Face)
    heads = cnb.ablate(back, task=t, unit="head", metric="label_logprob")
    assert list(heads.groupby("layer").size()) == [2, 3]
    dense = cnb.ablate(masked, task=t, unit="head", metric="label_logprob")
    kept = [la * HEADS + h for la in range(N_LAYERS) for h in range(HEADS) if h not in HEADS_OUT[la]]
    assert np.abs(heads.attrs["per_prompt"].to_numpy() - dense.attrs["per_prompt"].to_numpy()[kept]).max() < 1e-5
    mag = cnb.score(back, task=t, method="magnitude", unit="head")  # per-layer W_Q..W_O views of the sliced layers
    assert np.allclose(mag.score, cnb.score(vit, task=t, method="magnitude", unit="head").score[kept], rtol=1e-5)


def test_the_plain_copy_of_a_pruned_vit_can_take_sdpa_and_the_bridge_keeps_eager(vit, task):
    phys = cnb.prune_units(vit, heads=HEADS_OUT, neurons=NEURONS_OUT, physical=True, task=task)
    fast = cnb.models.hf.plain_hf(phys, attn_implementation="sdpa")
    plain = cnb.models.hf.plain_hf(phys)
    assert (fast.config._attn_implementation, plain.config._attn_implementation) == ("sdpa", "eager")
    assert phys.cfg.n_heads == HEADS and cnb.models.hf.plain_hf(phys, share=True).config._attn_implementation == "eager"
    with torch.no_grad():
        want = phys(IMAGES, return_type="logits")
        assert (fast(pixel_values=IMAGES).logits - want).abs().max() < 1e-5
        assert (plain(pixel_values=IMAGES).logits - want).abs().max() < 1e-5
        _, cache = phys.run_with_cache(IMAGES)  # the bridge still reads patterns after an sdpa copy was made
    assert cache["blocks.0.attn.hook_pattern"].shape[1] == HEADS - len(HEADS_OUT[0])


def test_blocks_dropped_and_scored_pruning(vit, ref, task, tmp_path):
    masked = cnb.prune_units(vit, blocks=[0], physical=False, task=task)
    blk = ref.vit.layers[0]
    want = logits_of(ref, IMAGES, [(blk.attention, "post", setter(None, slice(None))),
                                   (blk.mlp, "post", setter(None, slice(None)))])
    phys = cnb.prune_units(vit, blocks=[0], physical=True, task=task)
    with torch.no_grad():
        m, p = masked(IMAGES, return_type="logits"), phys(IMAGES, return_type="logits")
    assert (m - want).abs().max() < 1e-5 and (p - m).abs().max() / m.abs().max() < 1e-5
    assert phys.cfg.n_layers == 1 or len(phys.blocks) == 1
    folder = cnb.save_pruned(phys, tmp_path / "short")
    with torch.no_grad():
        assert (cnb.load_model(folder, device="cpu")(IMAGES, return_type="logits") - p).abs().max() < 1e-6
    scores = [cnb.score(vit, task=task, method="ablation", unit=u, kind="zero") for u in ("head", "neuron")]
    pm = cnb.prune(vit, scores, 0.5, physical=False, task=task)
    pp = cnb.prune(vit, scores, 0.5, physical=True, task=task)
    with torch.no_grad():
        a, b = pm(IMAGES, return_type="logits"), pp(IMAGES, return_type="logits")
    assert (a - b).abs().max() / a.abs().max() < 1e-5
    n = sum(p.numel() for p in cnb.models.hf.plain_hf(pp, share=True).parameters())
    assert n < sum(p.numel() for p in ref.parameters()) * 0.75


def test_mean_fill_pruning_equals_hf_mean_ablation(vit, ref, task):
    heads, neurons = {1: [2]}, {0: [1, 2, 3]}
    kw = {"heads": heads, "neurons": neurons, "fill": "mean"}
    pm = cnb.prune_units(vit, physical=False, reference=REFERENCE, task=task, **kw)
    pp = cnb.prune_units(vit, physical=True, reference=REFERENCE, task=task, **kw)
    # without reference=, the task's own images are averaged over
    own = cnb.prune_units(vit, physical=False, task=cnb.ImageClassificationTask(REFERENCE, LABELS[:5]), **kw)
    o, fc2 = ref.vit.layers[1].attention.o_proj, ref.vit.layers[0].mlp.fc2
    acts = record(ref, REFERENCE, [(o, "pre"), (fc2, "pre")])
    mo, mf = acts[(id(o), "pre")].mean((0, 1)), acts[(id(fc2), "pre")].mean((0, 1))
    want = logits_of(ref, IMAGES, [(o, "pre", setter(mo, cols("head", 2))), (fc2, "pre", setter(mf, [1, 2, 3]))])
    with torch.no_grad():
        a, b = pm(IMAGES, return_type="logits"), pp(IMAGES, return_type="logits")
    assert (a - want).abs().max() < 1e-5 and (b - a).abs().max() / a.abs().max() < 1e-5
    with torch.no_grad():
        assert (own(IMAGES, return_type="logits") - a).abs().max() < 1e-6


# --- bad input ---------------------------------------------------------------------------------------

def test_bad_input_is_named(vit, task):
    with pytest.raises(UnsupportedModelError, match=r"'vit' is a vision transformer.*ImageClassificationTask"):
        cnb.ablate(vit, ["a photo of a shoe"])
    with pytest.raises(UnsupportedModelError, match="ImageClassificationTask"):
        cnb.score(vit, ["a photo"], method="random")
    with pytest.raises(TypeError, match="are text"):
        cnb.ImageClassificationTask(["a photo of a shoe"], [0])
    with pytest.raises(ValueError, match=r"are 32x32, the model takes 28x28"):
        cnb.ablate(vit, task=cnb.ImageClassificationTask(torch.zeros(2, 1, 32, 32), [0, 1]))
    with pytest.raises(ValueError, match=r"have 3 channel\(s\), the model takes 1"):
        cnb.ablate(vit, task=cnb.ImageClassificationTask(torch.zeros(2, 3, 28, 28), [0, 1]))
    with pytest.raises(ValueError, match=r"label\(s\) \[10\] are outside the model's classes 0\.\.9"):
        cnb.ablate(vit, task=cnb.ImageClassificationTask(torch.zeros(2, 1, 28, 28), [0, 10]))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        cnb.ImageClassificationTask(torch.zeros(3, 1, 28, 28), [0, 1])
    with pytest.raises(TypeError, match="uint8.*float"):
        cnb.ImageClassificationTask(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
        cnb.ImageClassificationTask(torch.zeros(2, 28, 28), [0, 1])
    with pytest.raises(ValueError, match="unit 'q' is not available with ImageClassificationTask"):
        cnb.ablate(vit, task=task, unit="q")
    with pytest.raises(ValueError, match=r"unknown metric 'logprob' for ImageClassificationTask"):
        cnb.ablate(vit, task=task, metric="logprob")
    with pytest.raises(ValueError, match="n_tokens= is not used"):
        cnb.ablate(vit, task=task, n_tokens=8)
    with pytest.raises(ValueError, match="carries its inputs"):
        cnb.ablate(vit, torch.zeros(2, 1, 28, 28), task=task)
    with pytest.raises(ValueError, match=r"positions= \[17\]: not token positions of this ViT.*1\.\.16 the patches"):
        cnb.ablate(vit, task=task, positions=[17])
    with pytest.raises(ValueError, match=r"steps= is not used by method='attribution'"):
        cnb.patch(vit, corrupted=CORRUPTED, task=task, method="attribution", steps=3)
    with pytest.raises(ValueError, match="corrupted images have shape"):
        cnb.patch(vit, corrupted=CORRUPTED[:2], task=task)
    with pytest.raises(UnsupportedModelError, match=r"'vit' is a vision transformer.*ImageClassificationTask"):
        cnb.prune_units(vit, heads={0: [1]})  # pruning takes the task too, as the analyses do
    with pytest.raises(ValueError, match="one value per image"):
        cnb.ablate(vit, task=task, unit="mlp", metric=lambda lg, b: lg.sum())


def test_an_lm_refuses_the_image_task_and_images_as_prompts(tiny_dirs, task, vit):
    gpt2 = cnb.load_model(tiny_dirs["gpt2"], device="cpu")
    for images in (IMAGES, task.prepare(vit)):
        with pytest.raises(cnb.PromptSetError, match=r"prompts are images.*LM task reads text.*ImageClassificationTask"):
            cnb.ablate(gpt2, images, unit="mlp")
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not a vision model.*drop task="):
        cnb.ablate(gpt2, task=cnb.ImageClassificationTask(IMAGES, LABELS))
    with pytest.raises(UnsupportedModelError, match="not a vision model"):
        cnb.patch(gpt2, corrupted=CORRUPTED, task=cnb.ImageClassificationTask(IMAGES, LABELS))


def test_class_logits_in_batches_equal_hf(vit, ref):
    from causal_nb.engine.vision import class_logits

    x = torch.cat([IMAGES, CORRUPTED, REFERENCE])
    assert (class_logits(vit, x, batch_size=4) - logits_of(ref, x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="the model takes 28x28"):
        class_logits(vit, torch.zeros(1, 1, 14, 14))


def test_evaluate_on_images_against_sklearn_and_hf(vit, ref, task):
    from sklearn.metrics import accuracy_score, log_loss

    pruned = cnb.prune_units(vit, heads=HEADS_OUT, neurons=NEURONS_OUT, physical=True, task=task)
    out = cnb.evaluate(pruned, task=task, full_model=vit)
    edits = [(ref.vit.layers[la].attention.o_proj, "pre", setter(None, cols("head", h)))
             for la, hs in HEADS_OUT.items() for h in hs]
    edits += [(ref.vit.layers[la].mlp.fc2, "pre", setter(None, ns)) for la, ns in NEURONS_OUT.items()]
    p = torch.softmax(logits_of(ref, IMAGES, edits).double(), -1).numpy()
    full = torch.softmax(logits_of(ref, IMAGES).double(), -1).numpy()
    assert out["accuracy"] == accuracy_score(LABELS.numpy(), p.argmax(-1))
    assert out["loss"] == pytest.approx(log_loss(LABELS.numpy(), p, labels=list(range(10))), abs=1e-5)
    kl = (full * (np.log(full) - np.log(p))).sum(-1)
    assert np.allclose(out["per_prompt_kl"], kl, atol=1e-5) and kl.mean() > 1e-3
    assert out["top1_agreement"] == float((full.argmax(-1) == p.argmax(-1)).mean())
    assert out["params"] == sum(t.numel() for t in ref.parameters()) - 3 * (4 * DH * D + 3 * DH) - 26 * (2 * D + 1)
    with pytest.raises(ValueError, match="carries its inputs"):
        cnb.evaluate(vit, IMAGES, task=task)
