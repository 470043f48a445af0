"""Duplication-study figures (``cnb.heads_removed_by_layer``, ``cnb.layer_impact_bars``,
``cnb.sparsity_curves``, ``cnb.head_distance_heatmap``) on tiny hand-made tables: each figure's
table holds the numbers computed here with pandas ``groupby`` and ``scipy.stats.bootstrap``;
and ``cnb.layer_impact`` on a tiny OPT equals the plain Hugging Face model with the removed
heads' slices zeroed by a hook.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from plain_refs import hand_logprob, plain_tokens
from scipy import stats as st
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.zoo.tiny import make_tiny_model

LOGS = {
    "balanced": {"method": "balanced", "sparsities": {
        "0.25": {"removed": {"0": [1], "1": [3]}, "kept": {"0": [0, 2, 3], "1": [0, 1, 2]}},
        "0.5": {"removed": {"0": [1, 2], "1": [0, 3]}, "kept": {"0": [0, 3], "1": [1, 2]}}}},
    "imbalanced": {"method": "imbalanced", "sparsities": {
        "0.25": {"removed": {"0": [], "1": [0, 2]}, "kept": {"0": [0, 1, 2, 3], "1": [1, 3]}},
        "0.5": {"removed": {"0": [3], "1": [0, 1, 2]}, "kept": {"0": [0, 1, 2], "1": [3]}}}},
}


def test_heads_removed_by_layer_counts():
    fig, df = cnb.heads_removed_by_layer(LOGS)
    want = pd.DataFrame([{"label": lab, "sparsity": float(s), "layer": int(la), "removed": len(h),
                          "kept": len(LOGS[lab]["sparsities"][s]["kept"][la])}
                         for lab, log in LOGS.items() for s, sel in log["sparsities"].items()
                         for la, h in sel["removed"].items()])
    pd.testing.assert_frame_equal(df, want.sort_values(["label", "sparsity", "layer"]).reset_index(drop=True))
    assert (df.removed + df.kept == 4).all()
    # per (label, sparsity) the removals add up to the share of the 8 heads
    tot = df.groupby(["label", "sparsity"]).removed.sum()
    assert all(tot[(lab, s)] == round(s * 8) for lab, s in tot.index)
    assert len(fig.data) == 2 * 2  # a bar trace per label and panel
    _, one = cnb.heads_removed_by_layer(LOGS["imbalanced"], sparsity=0.5)
    assert one.removed.tolist() == [1, 3] and set(one.label) == {"imbalanced"}
    with pytest.raises(ValueError, match=r"0\.25, 0\.5"):
        cnb.heads_removed_by_layer(LOGS, sparsity=0.1)
    with pytest.raises(TypeError, match="pruning log"):
        cnb.heads_removed_by_layer({"a": 1})


def per_prompt_table():
    rng = np.random.default_rng(0)
    rows = []
    for method in ("balanced", "imbalanced"):
        for crit, slope in (("dup-cosine", 1.0), ("random", 3.0), ("ablation", 0.5)):
            for s in (0.0, 0.25, 0.5):
                for p in range(15):
                    rows.append({"method": method, "criterion": crit, "sparsity": s, "prompt": p,
                                 "loss": 3 + slope * s + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_sparsity_curves_bootstrap_per_group():
    table = per_prompt_table()
    fig, df = cnb.sparsity_curves(table, value="loss")
    mean = table.groupby(["method", "criterion", "sparsity"]).loss.mean().reset_index()
    assert len(df) == len(mean) == 18
    np.testing.assert_allclose(df["mean"], mean.loss.round(6), atol=1e-4)
    for _, r in df.sample(4, random_state=0).iterrows():
        v = table[(table.method == r.method) & (table.criterion == r.criterion) & (table.sparsity == r.sparsity)].loss
        ci = st.bootstrap((v.to_numpy(),), np.mean, n_resamples=2000, method="percentile", vectorized=False,
                          random_state=np.random.default_rng(0)).confidence_interval
        assert [r.ci_low, r.ci_high] == pytest.approx([ci.low, ci.high], abs=1e-4)
        assert r.n == 15
    # a band and a line per criterion and panel; the legend names each criterion once
    assert len(fig.data) == 2 * 3 * 2
    assert sorted(t.name for t in fig.data if t.showlegend) == ["ablation", "dup-cosine", "random"]


def test_sparsity_curves_summary_rows_and_bad_input():
    summary = pd.DataFrame({"criterion": ["a", "a", "b", "b"], "sparsity": [0.25, 0.5, 0.25, 0.5],
                            "value": [0.4, 0.3, 0.38, 0.2], "ci_low": [0.3, 0.2, 0.3, 0.1],
                            "ci_high": [0.5, 0.4, 0.45, 0.3]})
    fig, df = cnb.sparsity_curves(summary, value="value", facet=None)
    pd.testing.assert_frame_equal(df[["criterion", "sparsity", "mean", "ci_low", "ci_high"]],
                                  summary.rename(columns={"value": "mean"}))
    res = pd.DataFrame({"criterion": ["x", "x"], "sparsity": [0.0, 0.5], "loss": [3.0, 3.5],
                        "loss_ci_low": [2.9, 3.3], "loss_ci_high": [3.1, 3.7]})
    _, df = cnb.sparsity_curves(res, facet=None)  # duplication_prune's own column names
    assert df.ci_low.tolist() == [2.9, 3.3] and df.ci_high.tolist() == [3.1, 3.7]
    with pytest.raises(ValueError, match="method"):
        cnb.sparsity_curves(summary, value="value")
    with pytest.raises(ValueError, match="one per"):
        cnb.sparsity_curves(pd.concat([summary, summary]), value="value", facet=None)


def test_layer_impact_bars_and_distance_heatmap():
    table = pd.DataFrame({"label": ["balanced"] * 2 + ["imbalanced"] * 2, "sparsity": [0.5] * 4, "layer": [0, 1] * 2,
                          "heads_removed": [2, 2, 1, 3], "loss": [3.1, 3.2, 3.0, 3.6], "delta": [0.1, 0.2, 0.0, 0.6],
                          "ci_low": [0.05, 0.1, -0.02, 0.4], "ci_high": [0.15, 0.3, 0.03, 0.8]})
    fig, df = cnb.layer_impact_bars(table)
    assert df.delta.tolist() == table.delta.tolist() and "loss" not in df.columns
    bar = next(t for t in fig.data if t.name == "imbalanced")
    np.testing.assert_allclose(bar.error_y.array, [0.03, 0.2], atol=1e-9)
    np.testing.assert_allclose(bar.error_y.arrayminus, [0.02, 0.2], atol=1e-9)
    with pytest.raises(ValueError, match="layer_impact"):
        cnb.layer_impact_bars(table.drop(columns="ci_low"))
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(6, 3))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    names = [f"L{i // 3}H{i % 3}" for i in range(6)]
    dist = pd.DataFrame(d, index=names, columns=names)
    _, mat = cnb.head_distance_heatmap(dist)
    np.testing.assert_allclose(mat.to_numpy(), d, atol=1e-4)
    _, mat = cnb.head_distance_heatmap(dist, order="cluster")
    order = leaves_list(linkage(squareform(d, checks=False), "average"))
    assert list(mat.index) == [names[i] for i in order] == list(mat.columns)
    np.testing.assert_allclose(mat.to_numpy(), d[np.ix_(order, order)], atol=1e-4)


def test_layer_impact_against_hand_zeroed_heads(tmp_path):
    folder = make_tiny_model(tmp_path / "opt", "opt", n_layers=2, n_heads=4, d_model=32, d_mlp=32, init_std=0.15, seed=5)
    model = cnb.load_model(folder, device="cpu")
    texts = ["import os, sys; print(os.getcwd())", "template <typename T> T max(T a, T b);", "while True: break"]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, mask = plain_tokens(model, texts, 12)

    def hand(layer, heads):
        lin = hf.model.decoder.layers[layer].self_attn.out_proj
        dh = lin.in_features // 4

        def pre(mod, args):
            z = args[0].clone()
            for h in heads:
                z[..., h * dh:(h + 1) * dh] = 0
            return (z,)
        handle = lin.register_forward_pre_hook(pre)
        with torch.no_grad():
            out = (-hand_logprob(hf(tokens, attention_mask=mask.long()).logits, tokens, mask)).numpy()
        handle.remove()
        return out

    full = hand(0, [])
    got = cnb.layer_impact(model, LOGS, texts, n_tokens=12, sparsities=[0.5])
    assert len(got) == 4 and got.attrs["full_loss"] == pytest.approx(full.mean(), rel=1e-4)
    for _, r in got.iterrows():
        heads = LOGS[r.label]["sparsities"]["0.5"]["removed"][str(r.layer)]
        want = hand(int(r.layer), heads)
        assert r.heads_removed == len(heads)
        assert r.loss == pytest.approx(want.mean(), rel=1e-4, abs=1e-5)
        assert r.delta == pytest.approx((want - full).mean(), abs=1e-4)
        assert r.ci_low <= r.delta <= r.ci_high
    with pytest.raises(cnb.DuplicationError, match="0.25, 0.5"):
        cnb.layer_impact(model, LOGS, texts, n_tokens=12, sparsities=[0.1])


def test_duplication_table_benchmark_writes_figures_and_harness_tests(tiny_dirs, tmp_path):
    from benchmark_scripts import load_benchmark

    bench = load_benchmark("duplication_table")
    out = tmp_path / "bench"
    bench.main(["--model", str(tiny_dirs["gpt2"]), "--n-prompts", "6", "--n-tokens", "8", "--eval-tokens", "8",
                "--sparsities", "0.5", "--methods", "balanced", "--tasks", "cnb_next_line_python", "--limit", "3",
                "--out", str(out)])
    table = pd.read_csv(out / "table.csv")
    crits = {"dup-euclidean", "dup-cosine", "dup-random", "ablation", "attribution-abs"}
    assert set(table.criterion) == crits
    long = pd.read_parquet(out / "per_prompt.parquet")
    mean = long.groupby("criterion").loss.mean()
    assert np.allclose(table.set_index("criterion").loss[mean.index], mean)
    vs = pd.read_csv(out / "lm_eval_vs_random.csv")
    assert set(vs.criterion) == crits - {"dup-random"} and (vs.n == 3).all() and vs.p_holm.between(0, 1).all()
    ci = pd.read_csv(out / "lm_eval_ci.csv")
    assert set(ci.criterion) == crits and (ci.n == 3).all()
    assert (out / "figures" / "loss_vs_sparsity.html").exists() and (out / "figures" / "heads_removed_by_layer.html").exists()
    # the harness script re-prunes from the saved logs: the same numbers as the pipeline's own run
    dh = load_benchmark("duplication_harness")
    got = dh.main(["--model", str(tiny_dirs["gpt2"]), "--sparsity", "0.5", "--runs", str(out / "cosine_balanced"),
                   "--control", str(out / "random_balanced"), "--tasks", "cnb_next_line_python", "--limit", "3"])
    mine = got["ci"].set_index(["model", "metric"]).value
    ref = ci[ci.criterion == "dup-cosine"].set_index(["variant", "metric"]).value
    for metric in ("acc", "target_loglikelihood"):
        assert mine[("full", metric)] == pytest.approx(ref[("full", metric)], rel=1e-6)
        assert mine[("cosine_balanced", metric)] == pytest.approx(ref[("masked", metric)], rel=1e-6)
    assert set(got["vs_control"].model) == {"full", "cosine_balanced"}


def test_cluster_table_lists_the_logged_clusters():
    log = {"sparsities": {"0.5": {"clusters": [[[0, 2], [0, 1], [1, 3]], [[1, 0]], [[0, 0], [0, 3]]],
                                  "removed": {}, "kept": {}}}}
    df = cnb.cluster_table(log, 0.5)
    assert df.to_dict("records") == [
        {"cluster": 0, "size": 3, "kept": "L0H2", "removed": "L0H1 L1H3", "layers": "0 1"},
        {"cluster": 1, "size": 2, "kept": "L0H0", "removed": "L0H3", "layers": "0"}]
    with pytest.raises(cnb.DuplicationError, match=r"\[0\.5\]"):
        cnb.cluster_table(log, 0.25)
