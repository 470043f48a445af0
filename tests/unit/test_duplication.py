import numpy as np
import pandas as pd
import pytest
import torch

import causal_nb as cnb
from causal_nb.duplication import duplicate_clusters, head_outputs, head_similarity, uniqueness

P = ["def add(a, b): return a + b and more", "int main() { return 0; } // xx"]


def test_head_outputs_by_hand(tiny_model):
    x, labels = head_outputs(tiny_model, P, n_tokens=8)
    _, cache = tiny_model.run_with_cache(cnb.PromptSet.from_texts(P).tokenize(tiny_model, 8).tokens)
    want = (cache["blocks.1.attn.hook_z"][:, :, 3] @ tiny_model.W_O[1, 3]).flatten()
    assert torch.allclose(torch.tensor(x[labels.index((1, 3))]), want, atol=1e-5)


def test_similarity_kinds(tiny_model):
    cos = head_similarity(tiny_model, P, "cosine", n_tokens=8)
    n = tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    assert cos.shape == (n, n) and np.allclose(np.diag(cos), 1) and np.allclose(cos, cos.T)
    euc = head_similarity(tiny_model, P, "euclidean", n_tokens=8)
    assert np.allclose(np.diag(euc), 0, atol=1e-3)
    rnd = head_similarity(tiny_model, P, "random", n_tokens=8)
    off = rnd.to_numpy()[~np.eye(n, dtype=bool)]
    assert np.abs(off).max() < 0.3  # random high-dimensional vectors are near-orthogonal


def sim_table(m):
    idx = pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1)], names=["layer", "head"])
    return pd.DataFrame(np.asarray(m, float), index=idx, columns=idx)


def test_clusters_and_representatives():
    # (0,0) duplicates (1,1); (0,1) and (1,0) are unique
    sim = sim_table([[1, 0.1, 0.0, 0.95], [0.1, 1, 0.2, 0.0], [0.0, 0.2, 1, 0.1], [0.95, 0.0, 0.1, 1]])
    c = duplicate_clusters(sim, threshold=0.9, norms=pd.Series([1.0, 1, 1, 2], index=sim.index))
    pair = c[(c.layer == 0) & (c["head"] == 0)].cluster.item()
    assert c[(c.layer == 1) & (c["head"] == 1)].cluster.item() == pair
    assert c[c.cluster == pair].set_index(["layer", "head"]).representative.to_dict() == {(0, 0): False, (1, 1): True}
    assert c.representative.sum() == 3
    balanced = duplicate_clusters(sim, threshold=0.9, selection="balanced")
    assert balanced.representative.all()  # the duplicates sit in different layers
    assert np.allclose(uniqueness(sim), [0.05, 0.8, 0.8, 0.05])
    with pytest.raises(ValueError, match="selection must be"):
        duplicate_clusters(sim, selection="random")


def test_duplication_score(tiny_model):
    df = cnb.score(tiny_model, P, "duplication", unit="head", n_tokens=8)
    sim = head_similarity(tiny_model, P, n_tokens=8)
    assert np.allclose(df.score, uniqueness(sim))
    with pytest.raises(ValueError, match="heads only"):
        cnb.score(tiny_model, P, "duplication", unit="neuron")
