import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from causal_nb import stats


def table(scores):
    return pd.DataFrame({"layer": np.repeat([0, 1], len(scores) // 2), "head": np.tile(range(len(scores) // 2), 2),
                         "score": scores})


def test_rank_agreement_known_values():
    a = table([1.0, 2, 3, 4, 5, 6])
    same = stats.rank_agreement(a, table([10.0, 20, 30, 40, 50, 60]))
    assert same["spearman"] == pytest.approx(1) and same["kendall"] == pytest.approx(1)
    rev = stats.rank_agreement(a, table([6.0, 5, 4, 3, 2, 1]), k=2)
    assert rev["spearman"] == pytest.approx(-1) and rev["top2_overlap"] == 0
    # rows in another order are matched by unit, not by position
    shuffled = a.sample(frac=1, random_state=0)
    assert stats.rank_agreement(a, shuffled)["spearman"] == pytest.approx(1)
    with pytest.raises(ValueError, match="same units"):
        stats.rank_agreement(a, table([1.0, 2, 3, 4]))


def test_rank_agreement_with_a_layer_sample_compares_those_layers_only():
    whole = table([1.0, 2, 3, 6, 5, 4])
    sample = whole[whole.layer == 1].assign(score=[4.0, 5, 6])
    with pytest.raises(ValueError, match="same units"):  # a sample that does not say it is one
        stats.rank_agreement(whole, sample)
    sample.attrs["layers"] = [1]
    r = stats.rank_agreement(whole, sample)
    assert r["n_units"] == 3 and r["spearman"] == pytest.approx(-1)


def test_topk_overlap_by_hand():
    x = np.array([5, 4, 3, 2, 1.0])
    y = np.array([5, 1, 4, 2, 3.0])
    assert stats.topk_overlap(x, y, 2) == 0.5  # {0,1} vs {0,2}


def test_holm_matches_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone .06
    assert np.allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.normal(1, 1, 20), rng.normal(1, 1, 2000)
    m, lo, hi = stats.bootstrap_ci(small)
    assert lo < m < hi and m == pytest.approx(small.mean())
    _, lo2, hi2 = stats.bootstrap_ci(big)
    assert (hi2 - lo2) < (hi - lo) / 4


def test_paired_tests_detect_a_real_difference_and_not_a_null():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 40)
    per = {"causal": base + 0.5, "magnitude": base, "same": base + 0.5 + rng.normal(0, 1e-3, 40)}
    df = stats.paired_tests(per, "causal").set_index("other")
    assert df.loc["magnitude", "p"] < 1e-6 and df.loc["magnitude", "mean_diff"] == pytest.approx(0.5)
    assert df.loc["same", "p_holm"] > 0.05
    ref = st.wilcoxon(per["causal"] - per["magnitude"], alternative="greater")
    assert df.loc["magnitude", "p"] == pytest.approx(ref.pvalue)


def test_h1_ranks_methods_by_agreement_with_the_removal_effect():
    truth = table([1.0, 2, 3, 4, 5, 6])
    h1 = stats.h1_table({"good": table([1.1, 2, 3.5, 4, 5, 7]), "bad": table([6.0, 5, 4, 3, 2, 1])}, truth)
    assert list(h1.method) == ["good", "bad"]
    assert h1.spearman.tolist() == pytest.approx([1.0, -1.0])
    top = stats.h1_table({"good": table([1.1, 2, 3.5, 4, 5, 7])}, truth, k=2)
    assert top.k.item() == 2 and top.topk_overlap.item() == 1.0  # {5, 6} both times


def test_h2_ratio_and_tests_from_per_prompt_results():
    rng = np.random.default_rng(0)
    rows = []
    for s in (0.5, 0.8):
        base = rng.uniform(0.3, 0.6, 30)
        rows.append({"method": "ablation", "unit": "head", "model": "m", "sparsity": s, "q": list(base + 0.2)})
        rows.append({"method": "magnitude", "unit": "head", "model": "m", "sparsity": s, "q": list(base)})
    h2 = stats.h2_table(pd.DataFrame(rows), "ablation", quality="q")
    at80 = h2[(h2.sparsity == 0.8) & (h2.method == "magnitude")].iloc[0]
    ref = h2[(h2.sparsity == 0.8) & (h2.method == "ablation")].iloc[0]
    assert at80.ratio_ref_over_method == pytest.approx(ref.retained / at80.retained)
    assert at80.p < 1e-5 and at80.ci_low < at80.retained < at80.ci_high
    with pytest.raises(ValueError, match="reference method 'taylor'"):
        stats.h2_table(pd.DataFrame(rows), "taylor", quality="q")
    # reference= means prompts everywhere in the kit; here the method is reference_method=
    with pytest.raises(TypeError, match="reference_method"):
        stats.h2_table(pd.DataFrame(rows), reference="ablation", quality="q")
    assert stats.h2_table(pd.DataFrame(rows), reference_method="ablation", quality="q").equals(h2)


def test_cross_domain_table_runs_h2_per_evaluation_domain():
    rng = np.random.default_rng(1)
    rows = []
    for s in (0.5, 0.8):
        a, b = rng.uniform(0.3, 0.6, 30), rng.uniform(0.3, 0.6, 30)
        # on "py" the reference wins; on "cpp" the two are equal
        rows.append({"method": "ablation", "unit": "head", "model": "m", "sparsity": s,
                     "py_per_prompt_top1": list(a + 0.2), "cpp_per_prompt_top1": list(b)})
        rows.append({"method": "magnitude", "unit": "head", "model": "m", "sparsity": s,
                     "py_per_prompt_top1": list(a), "cpp_per_prompt_top1": list(b)})
    t = stats.cross_domain_table(pd.DataFrame(rows), "ablation", ["py", "cpp"])
    assert set(t.sparsity) == {0.8} and list(t.domain) == ["py", "py", "cpp", "cpp"]
    mag = t[t.method == "magnitude"].set_index("domain")
    assert mag.ratio_ref_over_method["py"] > 1.3 and mag.ratio_ref_over_method["cpp"] == pytest.approx(1.0)
    want = stats.h2_table(pd.DataFrame(rows), "ablation", quality="cpp_per_prompt_top1")
    assert mag.retained["cpp"] == pytest.approx(want[(want.sparsity == 0.8) & (want.method == "magnitude")].retained.iloc[0])


def test_h2_summary_compares_within_each_model_and_unit():
    rng = np.random.default_rng(2)
    rows = []
    for model, gain in (("a", 0.2), ("b", 0.0)):
        for s in (0.5, 0.8):
            base = rng.uniform(0.3, 0.6, 30)
            rows.append({"method": "ablation", "unit": "head", "model": model, "sparsity": s, "q": list(base + gain)})
            rows.append({"method": "magnitude", "unit": "head", "model": model, "sparsity": s, "q": list(base)})
            rows.append({"method": "attribution", "unit": "neuron", "model": model, "sparsity": s, "q": list(base)})
            rows.append({"method": "random", "unit": "neuron", "model": model, "sparsity": s, "q": list(base - 0.1)})
    t = stats.h2_summary(pd.DataFrame(rows), {"head": "ablation", "neuron": "attribution"}, quality="q")
    assert len(t) == 4 and set(t.sparsity) == {0.8}
    r = t.set_index(["model", "unit"]).ratio_ref_over_method
    assert r["a", "head"] > 1.3 and r["b", "head"] == pytest.approx(1.0) and r["a", "neuron"] > 1.1
    one = stats.h2_table(pd.DataFrame(rows), "ablation", quality="q", unit="head", model="a")
    assert r["a", "head"] == pytest.approx(one[(one.sparsity == 0.8) & (one.method == "magnitude")].ratio_ref_over_method.iloc[0])
    with pytest.raises(ValueError, match="no results for the unit kinds"):
        stats.h2_summary(pd.DataFrame(rows), {"block": "ablation"}, quality="q")
