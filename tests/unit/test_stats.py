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
