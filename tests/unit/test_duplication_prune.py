"""Duplication pruning (``cnb.duplication_prune``, ``python -m causal_nb duplicate``) on tiny
random-config BLOOM, OPT and GPT-2 models.

References: head outputs from ``run_with_cache`` (z @ W_O by hand), prompt groups and head
clusters from scipy directly (``pdist``/``cdist``, ``linkage``, ``fcluster`` with ``maxclust``),
and the held-out loss of the plain Hugging Face model (``from_pretrained``) with the removed
heads' slices of the attention output projection's input zeroed by a hook.
"""

import json
import math

import numpy as np
import pytest
import torch
from plain_refs import hand_logprob, plain_tokens
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, pdist, squareform
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.__main__ import main
from causal_nb.pruning.duplication import group_prompts, head_distances, head_output_table, select_duplicates
from causal_nb.zoo.tiny import make_tiny_model

TRAIN = ["def add(a, b): return a + b and more", "int main() { return 0; } // xx", "for i in range(10): print(i)",
         "std::vector<int> v; v.push_back(1);", "class Point: def __init__(self): pass", "x = [i * i for i in y]"]
TEST = ["import os, sys; print(os.getcwd())", "template <typename T> T max(T a, T b);", "while True: break"]
N_TOK = 12
FAMS = {"bloom": {"d_model": 16}, "opt": {"d_model": 32}}


@pytest.fixture(scope="module", params=sorted(FAMS))
def fam(request, tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp(request.param) / request.param, request.param, n_layers=2,
                             n_heads=4, d_mlp=32, init_std=0.15, seed=5, **FAMS[request.param])
    return request.param, folder, cnb.load_model(folder, device="cpu")


def reference_outputs(model, texts, n):
    tokens, mask = plain_tokens(model, texts, n)
    _, cache = model.run_with_cache(tokens)
    heads = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][mask].detach().double().numpy()  # [real, head, d_head]
        w = model.blocks[layer].attn.W_O.detach().double().numpy()  # [head, d_head, d_model]
        heads += [z[:, h] @ w[h] for h in range(model.cfg.n_heads)]
    return np.stack(heads), np.nonzero(mask.numpy())[0]  # [head, real, d_model], prompt of each position


def partition(clusters):
    return sorted(sorted(map(tuple, c)) for c in clusters)


def test_groups_distances_and_clusters_against_scipy(fam):
    name, folder, model = fam
    x, prompt_of, labels = head_output_table(model, TRAIN, N_TOK)
    ref, ref_prompt = reference_outputs(model, TRAIN, N_TOK)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert (prompt_of == ref_prompt).all()
    # prompt groups: average-linkage clusters of each prompt's mean head outputs (cosine)
    feats = np.stack([ref[:, ref_prompt == p].mean(1).ravel() for p in range(len(TRAIN))])
    want = fcluster(linkage(pdist(feats, "cosine"), "average"), t=2, criterion="maxclust")
    groups = group_prompts(x, prompt_of, 2, "cosine")
    assert sorted(map(sorted, [np.flatnonzero(groups == g) for g in set(groups)])) == \
        sorted(map(sorted, [np.flatnonzero(want == g) for g in set(want)]))
    for metric in ("cosine", "euclidean"):
        dist, norms = head_distances(x, prompt_of, groups, metric)
        per = []
        for g in set(groups):
            flat = ref[:, np.isin(ref_prompt, np.flatnonzero(groups == g))].reshape(len(ref), -1)
            d = cdist(flat, flat, metric)
            per.append(d / d[np.triu_indices(len(d), 1)].mean() if metric == "euclidean" else d)
        np.testing.assert_allclose(dist, np.mean(per, 0), atol=1e-6)
        np.testing.assert_allclose(norms, np.linalg.norm(ref.reshape(len(ref), -1), axis=1), rtol=1e-6)
        n = len(labels)
        for s in (0.25, 0.5):
            got = select_duplicates(dist, norms, labels, s, "imbalanced")
            cut = fcluster(linkage(squareform(dist, checks=False), "average"), t=n - round(s * n), criterion="maxclust")
            want_c = [[labels[i] for i in np.flatnonzero(cut == c)] for c in set(cut)]
            assert partition(got["clusters"]) == partition(want_c)
            for c in got["clusters"]:  # the kept head is the cluster's largest-norm head
                assert max(c, key=lambda lh: norms[labels.index(tuple(lh))]) == c[0]
            got = select_duplicates(dist, norms, labels, s, "balanced")
            k = round(s * model.cfg.n_heads)
            for layer in range(model.cfg.n_layers):
                idx = [i for i, (la, _) in enumerate(labels) if la == layer]
                sub = squareform(dist[np.ix_(idx, idx)], checks=False)
                cut = fcluster(linkage(sub, "average"), t=len(idx) - k, criterion="maxclust")
                want_c = [[labels[idx[i]] for i in np.flatnonzero(cut == c)] for c in set(cut)]
                assert partition([c for c in got["clusters"] if c[0][0] == layer]) == partition(want_c)
                assert len(got["removed"][layer]) == k and len(got["kept"][layer]) == model.cfg.n_heads - k


def hand_loss(folder, model, texts, removed, arch):
    """Mean next-token loss per prompt of the plain HF model with the removed heads zeroed by hand."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    layers = hf.transformer.h if arch == "bloom" else hf.model.decoder.layers
    handles = []
    for layer, heads in removed.items():
        lin = layers[int(layer)].self_attention.dense if arch == "bloom" else layers[int(layer)].self_attn.out_proj
        dh = lin.in_features // model.cfg.n_heads

        def pre(mod, args, heads=heads, dh=dh):
            z = args[0].clone()
            for h in heads:
                z[..., h * dh:(h + 1) * dh] = 0
            return (z,)
        handles.append(lin.register_forward_pre_hook(pre))
    tokens, mask = plain_tokens(model, texts, N_TOK)
    with torch.no_grad():
        logits = hf(tokens, attention_mask=mask.long()).logits
    for h in handles:
        h.remove()
    return (-hand_logprob(logits, tokens, mask)).numpy()


@pytest.mark.parametrize("method", ["balanced", "imbalanced"])
def test_pipeline_masked_equals_physical_equals_hand(fam, method, tmp_path):
    name, folder, model = fam
    res = cnb.duplication_prune(model, TRAIN, metric="euclidean", group_metric="random", method=method,
                                sparsities=[0.25, 0.5], out=tmp_path, n_tokens=N_TOK, eval_prompts=TEST,
                                eval_tokens=N_TOK, n_groups=2)
    assert set(res.variant) == {"full", "masked", "physical"}
    log = json.loads((tmp_path / "pruning_log.json").read_text())
    per = __import__("pandas").read_parquet(tmp_path / "prompt_losses.parquet")
    for s in (0.25, 0.5):
        entry = log["sparsities"][str(s)]
        removed = {int(k): v for k, v in entry["removed"].items()}
        n_removed = sum(map(len, removed.values()))
        assert n_removed == round(s * 8) and all(entry["kept"][str(la)] for la in range(2))
        if method == "balanced":
            assert len({len(v) for v in removed.values()}) == 1
        m = per[(per.sparsity == s) & (per.variant == "masked")].loss.to_numpy()
        p = per[(per.sparsity == s) & (per.variant == "physical")].loss.to_numpy()
        np.testing.assert_allclose(p, m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m, hand_loss(folder, model, TEST, removed, name), rtol=1e-4, atol=1e-5)
        assert sorted(h for c in entry["clusters"] for _, h in c[1:]) == sorted(h for v in removed.values() for h in v)
    full = per[per.variant == "full"].loss.to_numpy()
    np.testing.assert_allclose(full, hand_loss(folder, model, TEST, {}, name), rtol=1e-4, atol=1e-5)
    imp = __import__("pandas").read_parquet(tmp_path / "head_importance.parquet")
    assert list(imp.columns[:3]) == ["layer", "head", "score"] and len(imp) == 8
    dist = __import__("pandas").read_parquet(tmp_path / "head_distances.parquet").to_numpy()
    np.testing.assert_allclose(imp.score, np.where(np.eye(8, dtype=bool), np.inf, dist).min(1))
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pickle"))


def test_bad_input(fam):
    name, folder, model = fam
    kw = {"eval_prompts": TEST, "n_tokens": N_TOK}
    with pytest.raises(cnb.DuplicationError, match="'euclidean', 'cosine', 'random'"):
        cnb.duplication_prune(model, TRAIN, metric="l1", **kw)
    with pytest.raises(cnb.DuplicationError, match="'balanced', 'imbalanced'"):
        cnb.duplication_prune(model, TRAIN, method="global", **kw)
    with pytest.raises(cnb.DuplicationError, match="group metric"):
        cnb.duplication_prune(model, TRAIN, group_metric="manhattan", **kw)
    with pytest.raises(cnb.DuplicationError, match="every layer.*all of them"):
        cnb.duplication_prune(model, TRAIN, method="balanced", sparsities=[0.25, 0.9], **kw)
    with pytest.raises(cnb.DuplicationError, match="fewer than one per layer"):
        cnb.duplication_prune(model, TRAIN, method="imbalanced", sparsities=[0.9], **kw)
    with pytest.raises(cnb.DuplicationError, match="eval_prompts"):
        cnb.duplication_prune(model, TRAIN)


def test_cli_end_to_end(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "dup"
    rc = main(["duplicate", "cosine", str(tiny_dirs["gpt2"]), str(out), "python", "cosine", "balanced",
               "--sparsities", "0.25", "--n-prompts", "6", "--n-tokens", "12", "--eval-tokens", "12",
               "--lm-eval-tasks", "cnb_next_line_python", "--limit", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    for f in ("pruning_log.json", "head_importance.parquet", "head_importance.json", "head_distances.parquet",
              "results.csv", "prompt_losses.parquet", "lm_eval.csv"):
        assert (out / f).exists(), f
    import pandas as pd

    res = pd.read_csv(out / "results.csv")
    assert set(res.variant) == {"full", "masked", "physical"} and res.loss.map(math.isfinite).all()
    h = pd.read_csv(out / "lm_eval.csv")
    assert set(h.variant) == {"full", "masked", "physical"} and (h.n == 2).all()
    # the physically pruned model's harness numbers equal the masked model's
    acc = h[h.metric == "acc"].set_index(["sparsity", "variant"]).value
    assert acc[(0.25, "masked")] == acc[(0.25, "physical")]
    assert main(["duplicate", "l2", str(tiny_dirs["gpt2"]), str(out), "python", "cosine", "balanced"]) == 1
    assert "'euclidean', 'cosine', 'random'" in capsys.readouterr().err


def test_gqa_llama_physical_equals_masked(tiny_dirs):
    # 4 query heads sharing 2 key/value heads: uneven groups are padded back with zeroed heads
    model = cnb.load_model(tiny_dirs["llama"], device="cpu")
    res = cnb.duplication_prune(model, TRAIN, metric="cosine", group_metric="euclidean", method="imbalanced",
                                sparsities=[0.25, 0.5], n_tokens=N_TOK, eval_prompts=TEST, eval_tokens=N_TOK)
    loss = res.set_index(["sparsity", "variant"]).loss
    for s in (0.25, 0.5):
        assert loss[(s, "physical")] == pytest.approx(loss[(s, "masked")], rel=1e-5)
        removed = res.attrs["log"]["sparsities"][str(s)]["removed"]
        assert sum(map(len, removed.values())) == round(s * 8) and all(len(v) < 4 for v in removed.values())


def test_imbalanced_keeps_a_head_in_every_layer_when_a_layer_is_all_duplicates():
    # layers 0 and 1 are one cluster whose largest-norm head is layer 0's: no representative move
    # saves layer 1, so a further merge (layer 2's pair) pays for keeping one of layer 1's heads
    labels = [(la, h) for la in range(3) for h in range(2)]
    d = np.ones((6, 6))
    d[:4, :4] = 0.01
    d[4, 5] = d[5, 4] = 0.5
    np.fill_diagonal(d, 0)
    norms = np.array([5.0, 1.0, 2.0, 3.0, 1.0, 1.5])
    got = select_duplicates(d, norms, labels, 0.5, "imbalanced")
    assert sum(map(len, got["removed"].values())) == 3 and all(got["kept"].values())
    assert got["kept"] == {0: [0], 1: [1], 2: [1]} and got["extra_kept"] == [[1, 1]]
