"""Item-level intervals and paired tests of harness results (``cnb.harness_ci``,
``cnb.harness_paired_test``), against numbers computed here: means and perplexity ratios by
hand, the bootstrap by calling ``scipy.stats.bootstrap`` directly, McNemar's exact test from the
binomial formula (``math.comb``), Wilcoxon from ``scipy.stats.wilcoxon``; and on a real harness
run (a tiny GPT-2 pruned by duplication), the aggregates equal the harness's own.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

import causal_nb as cnb
from causal_nb.zoo.tiny import make_tiny_model

RNG = np.random.default_rng(3)
N_MC, N_DOC = 40, 12


def fake_items(acc_p: float, ll_shift: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N_MC):
        lls = rng.normal(-20, 5, size=4)
        target = int(rng.integers(4))
        correct = rng.random() < acc_p
        if correct:
            lls[target] = lls.max() + 1.0
        rows.append({"task": "mc", "doc_id": i, "target": target, "loglikelihoods": list(lls),
                     "acc": float(np.argmax(lls) == target), "acc_norm": float(np.argmax(lls) == target)})
    words = np.random.default_rng(0).integers(20, 60, size=N_DOC)  # the same documents in every result
    nbytes = words * 6
    for i in range(N_DOC):
        rows.append({"task": "ppl", "doc_id": i, "loglikelihood": float(-3.0 * words[i] + rng.normal(ll_shift, 4)),
                     "words": float(words[i]), "bytes": float(nbytes[i])})
    return rows


def scipy_ci(data, stat, paired=False):
    res = st.bootstrap(data, stat, paired=paired, vectorized=False, n_resamples=2000, confidence_level=0.95,
                       method="percentile", random_state=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def test_ci_values_and_intervals_by_hand():
    items = fake_items(0.6, 0.0, seed=1)
    got = cnb.harness_ci(items).set_index(["task", "metric"])
    mc = pd.DataFrame([r for r in items if r["task"] == "mc"])
    acc = mc.acc.to_numpy()
    assert got.loc[("mc", "acc"), "value"] == pytest.approx(acc.mean())
    assert got.loc[("mc", "acc"), ["ci_low", "ci_high"]].tolist() == pytest.approx(scipy_ci((acc,), np.mean))
    tll = np.array([r["loglikelihoods"][r["target"]] for r in items if r["task"] == "mc"])
    assert got.loc[("mc", "target_loglikelihood"), "value"] == pytest.approx(tll.mean())
    doc = pd.DataFrame([r for r in items if r["task"] == "ppl"])
    ll, w, b = doc.loglikelihood.to_numpy(), doc.words.to_numpy(), doc.bytes.to_numpy()
    assert got.loc[("ppl", "word_perplexity"), "value"] == pytest.approx(math.exp(-ll.sum() / w.sum()))
    assert got.loc[("ppl", "byte_perplexity"), "value"] == pytest.approx(math.exp(-ll.sum() / b.sum()))
    assert got.loc[("ppl", "bits_per_byte"), "value"] == pytest.approx(-ll.sum() / b.sum() / math.log(2))
    lo, hi = scipy_ci((ll, w), lambda x, y: math.exp(-x.sum() / y.sum()), paired=True)
    assert got.loc[("ppl", "word_perplexity"), ["ci_low", "ci_high"]].tolist() == pytest.approx([lo, hi])
    assert lo < got.loc[("ppl", "word_perplexity"), "value"] < hi
    assert (got.loc["mc", "n"] == N_MC).all() and (got.loc["ppl", "n"] == N_DOC).all()
    assert "acc" not in got.loc["ppl"].index and "word_perplexity" not in got.loc["mc"].index


def mcnemar_exact(n10, n01):
    n, k = n10 + n01, min(n10, n01)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def test_paired_test_against_formulas():
    a, b = fake_items(0.8, 6.0, seed=1), fake_items(0.3, 0.0, seed=2)
    got = cnb.harness_paired_test(a, b).set_index(["task", "metric"])
    da = pd.DataFrame(a).set_index(["task", "doc_id"])
    db = pd.DataFrame(b).set_index(["task", "doc_id"])
    x, y = da.loc["mc"].acc.to_numpy(), db.loc["mc"].acc.to_numpy()
    row = got.loc[("mc", "acc")]
    assert row.value == pytest.approx(x.mean()) and row.control == pytest.approx(y.mean())
    assert row["diff"] == pytest.approx((x - y).mean()) and row.test == "mcnemar_exact"
    n10, n01 = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    assert row.p == pytest.approx(mcnemar_exact(n10, n01))
    assert [row.ci_low, row.ci_high] == pytest.approx(scipy_ci((x - y,), np.mean))
    tx = np.array([r["loglikelihoods"][r["target"]] for r in a if r["task"] == "mc"])
    ty = np.array([r["loglikelihoods"][r["target"]] for r in b if r["task"] == "mc"])
    row = got.loc[("mc", "target_loglikelihood")]
    assert row.test == "wilcoxon" and row.p == pytest.approx(st.wilcoxon(tx - ty, zero_method="zsplit").pvalue)
    lx, ly = da.loc["ppl"].loglikelihood.to_numpy(), db.loc["ppl"].loglikelihood.to_numpy()
    w = da.loc["ppl"].words.to_numpy()
    row = got.loc[("ppl", "word_perplexity")]
    assert row["diff"] == pytest.approx(math.exp(-lx.sum() / w.sum()) - math.exp(-ly.sum() / w.sum()))
    assert row.p == pytest.approx(st.wilcoxon(lx - ly, zero_method="zsplit").pvalue)
    assert row.higher_is_better == False and row["diff"] < 0  # noqa: E712 - a's documents are likelier
    # one-sided "better": the direction follows the metric (lower perplexity, higher accuracy)
    better = cnb.harness_paired_test(a, b, alternative="better").set_index(["task", "metric"])
    assert better.loc[("ppl", "word_perplexity"), "p"] == pytest.approx(
        st.wilcoxon(lx - ly, alternative="greater", zero_method="zsplit").pvalue)
    assert better.loc[("mc", "acc"), "p"] == pytest.approx(st.binomtest(n10, n10 + n01, 0.5, "greater").pvalue)
    # Holm over every row, monotone in the raw p-values
    p = got.p.to_numpy()
    order = np.argsort(p)
    want = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    np.testing.assert_allclose(got.p_holm.to_numpy()[order], want)


def test_identical_results_and_bad_input():
    a = fake_items(0.5, 0.0, seed=4)
    same = cnb.harness_paired_test(a, a)
    assert (same["diff"] == 0).all() and (same.p == 1).all()
    with pytest.raises(ValueError, match="same tasks and limit"):
        cnb.harness_paired_test(a, [r for r in a if r["doc_id"] < 5])
    with pytest.raises(ValueError, match="different tasks"):
        cnb.harness_paired_test(a, [r for r in a if r["task"] == "mc"])
    with pytest.raises(TypeError, match="attrs"):
        cnb.harness_ci(pd.DataFrame({"task": ["mc"], "metric": ["acc"], "value": [0.5]}))
    with pytest.raises(ValueError, match="alternative"):
        cnb.harness_paired_test(a, a, alternative="less")


def test_on_a_harness_run_of_a_duplication_pruning(tmp_path):
    folder = make_tiny_model(tmp_path / "gpt2", "gpt2", n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=128,
                             seed=1, init_std=0.1)
    model = cnb.load_model(folder, device="cpu")
    texts = ["def f(x): return x * 2", "int main() { return 1; }", "for k in d: print(k)", "x = y + 1  # add"]
    tasks = ["cnb_next_line_python", "cnb_heldout_ppl_python"]
    res = cnb.duplication_prune(model, texts, metric="cosine", group_metric="cosine", sparsities=[0.5],
                                eval_prompts=texts[:2], n_tokens=10, eval_tokens=10, n_groups=1, tasks=tasks, limit=6,
                                physical=False, out=tmp_path / "dup")
    items = pd.read_parquet(tmp_path / "dup" / "lm_eval_items.parquet")
    assert set(items.variant) == {"full", "masked"} and len(items) == 2 * 2 * 6
    harness = pd.DataFrame(res.attrs["lm_eval"])
    for variant in ("full", "masked"):
        ci = cnb.harness_ci(items[items.variant == variant]).set_index(["task", "metric"])
        own = harness[harness.variant == variant].set_index(["task", "metric"]).value
        for key in [("cnb_next_line_python", "acc"), ("cnb_heldout_ppl_python", "byte_perplexity"),
                    ("cnb_heldout_ppl_python", "word_perplexity"), ("cnb_heldout_ppl_python", "bits_per_byte")]:
            assert ci.loc[key, "value"] == pytest.approx(own[key], rel=1e-6), (variant, key)
    test = cnb.harness_paired_test(items[items.variant == "masked"], items[items.variant == "full"])
    assert set(test.task) == set(tasks) and (test.n == 6).all() and test.p.between(0, 1).all()
