import numpy as np
import pandas as pd
import pytest

import causal_nb as cnb
from causal_nb.analyses.duplication import duplicate_clusters, head_outputs, head_similarity, uniqueness

P = ["def add(a, b): return a + b and more", "int main() { return 0; } // xx"]


def reference_outputs(model, texts, n):
    """Each head's z_h @ W_O[h] over the real positions, from run_with_cache: [layer*head, features]."""
    from plain_refs import plain_tokens

    tokens, mask = plain_tokens(model, texts, n)
    _, cache = model.run_with_cache(tokens)
    rows = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][mask].detach().numpy()  # [real, head, d_head]
        w = model.W_O[layer].detach().numpy()  # [head, d_head, d_model]
        rows += [(z[:, h] @ w[h]).ravel() for h in range(model.cfg.n_heads)]
    return np.stack(rows)


# the second prompt is shorter than 8 tokens: its padding must be left out
P_PAD = [P[0], "x = 1"]


def test_head_outputs_by_hand(tiny_model):
    x, labels = head_outputs(tiny_model, P_PAD, n_tokens=8)
    want = reference_outputs(tiny_model, P_PAD, 8)
    assert labels == [(la, h) for la in range(tiny_model.cfg.n_layers) for h in range(tiny_model.cfg.n_heads)]
    assert x.shape == want.shape and np.allclose(x, want, atol=1e-5)


def test_similarities_and_duplication_score_against_scipy(tiny_model):
    from scipy.spatial.distance import cdist

    ref = reference_outputs(tiny_model, P_PAD, 8)
    cos = 1 - cdist(ref, ref, "cosine")
    assert np.allclose(head_similarity(tiny_model, P_PAD, "cosine", n_tokens=8).to_numpy(), cos, atol=1e-5)
    euc = cdist(ref, ref, "euclidean")
    assert np.allclose(head_similarity(tiny_model, P_PAD, "euclidean", n_tokens=8).to_numpy(), euc,
                       atol=1e-4 * euc.max())
    off = np.where(np.eye(len(cos), dtype=bool), -np.inf, cos)
    want = 1 - off.max(1)
    df = cnb.score(tiny_model, P_PAD, "duplication", unit="head", n_tokens=8)
    assert np.allclose(df.score, want, atol=1e-5)
    assert want.std() > 1e-3  # heads differ, so a mixed-up order would show


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


def test_duplication_score_is_heads_only(tiny_model):
    with pytest.raises(ValueError, match="heads only"):
        cnb.score(tiny_model, P, "duplication", unit="neuron")
