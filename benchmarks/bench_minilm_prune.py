"""Head pruning of all-MiniLM-L6-v2 on the Tatoeba paraphrase task: exact ablation vs magnitude.

    OMP_NUM_THREADS=1 python benchmarks/bench_minilm_prune.py               # ~48 scoring pairs, 300 held out
    python benchmarks/bench_minilm_prune.py --n-train 48 --n-eval 1000 --out runs/minilm_prune.json

Heads are scored on balanced training pairs (half paraphrases, half negatives, from the train
split) by exact ablation (``score(model, method="ablation", unit="head", kind=FILL, task=...)``:
the mean drop in pair cosine when the head is zeroed, or set to its mean with ``--fill mean``,
as the pruned heads then are; and ``ablation-abs``, the mean |change| of the pair cosines, see
``abs_damage``), by weight magnitude and at random (a
control); each ranking prunes 10/25/50/80% of the heads physically (global budget, at least one
head per layer) and the pruned encoder is evaluated on held-out test-split pairs: Spearman and
ROC AUC against the gold 0/1, mean |cosine - the dense model's cosine|, encoder parameters,
FLOPs per token and the bare encoder's latency. Also checked: physical = masked on the 50%
ablation selection (max relative difference of the pooled embeddings) and H2 via
``stats.h2_table`` on the per-pair retained quality (1 - |cosine drift|). Prints one JSON object.

Measured 2026-12-02 (2 shared CPU cores, 1 thread; 48 scoring / 300 held-out pairs, zero fill):
dense Spearman 0.839, AUC 0.985, 22.57M encoder parameters. At 80% of the heads (19.71M
parameters, 15.8 vs 22.4 MFLOPs/token) the mean |cosine drift| is 0.118 for ablation-abs, 0.144
random, 0.168 magnitude and 0.225 for the signed ablation score, which prunes first the heads
whose removal raises cosines; ablation-abs retains significantly more than every other method
at every sparsity (Holm p < 0.001), the signed score less than random. Spearman stays within
0.812-0.844 for every method and sparsity. Physical = masked to 3.9e-7 relative.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

import causal_nb as cnb


def balanced(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first n/2 paraphrases and the first n/2 negatives of a split, in file order."""
    pos, neg = pairs[pairs.score == 1].iloc[: n // 2], pairs[pairs.score == 0].iloc[: n - n // 2]
    return pd.concat([pos, neg]).sort_index()


def abs_damage(table: pd.DataFrame) -> pd.DataFrame:
    """The ablation scores with each pair's cosine change taken in absolute value: a head whose
    removal moves cosines *up* (the plain score calls that negative damage and prunes it first)
    changes the embedding space too, which ``cos_drift`` counts."""
    out = table.copy()
    out["score"] = table.attrs["per_prompt"].abs().mean(axis=1).to_numpy()
    out.attrs = {**table.attrs, "method": "ablation-abs"}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.25, 0.5, 0.8])
    ap.add_argument("--fill", default="zero", choices=["zero", "mean"],
                    help="what pruned heads leave (the ablation scores use the same kind; mean over the scoring pairs)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    t_all = time.perf_counter()
    model = cnb.load_model(a.model, device="cpu")
    train = balanced(cnb.load_sentence_pairs("tatoeba-paraphrase", "train"), a.n_train)
    held = balanced(cnb.load_sentence_pairs("tatoeba-paraphrase", "test"), a.n_eval)
    task = cnb.SentencePairTask(train)
    out: dict = {"model": a.model, "n_train_pairs": len(train), "n_eval_pairs": len(held), "fill": a.fill,
                 "seconds": {}}
    scores = {}
    for method in ("ablation", "magnitude", "random"):
        t0 = time.perf_counter()
        kw = {"kind": a.fill} if method == "ablation" else {}
        scores[method] = cnb.score(model, task=task, method=method, unit="head", progress=False, **kw)
        out["seconds"][f"score_{method}"] = round(time.perf_counter() - t0, 2)
    scores["ablation-abs"] = abs_damage(scores["ablation"])
    out["h1"] = cnb.stats.h1_table({m: scores[m] for m in ("ablation-abs", "magnitude", "random")},
                                   scores["ablation"]).to_dict(orient="records")
    t0 = time.perf_counter()
    dense = cnb.evaluate(model, task=cnb.SentencePairTask(held), full_model=model, latency_batches=(1, 32))
    out["seconds"]["evaluate_dense"] = round(time.perf_counter() - t0, 2)
    out["dense"] = {k: v for k, v in dense.items() if not k.startswith("per_prompt")}
    t0 = time.perf_counter()
    res = cnb.encoder_sweep(model, scores, a.sparsities, held, physical=True, latency=True, n_boot=1000,
                            fill=a.fill, reference=train if a.fill == "mean" else None, model_name=a.model)
    out["seconds"]["sweep"] = round(time.perf_counter() - t0, 2)
    cols = ["method", "sparsity", "pairs_spearman", "pairs_roc_auc", "pairs_cos_drift", "pairs_emb_agreement", "params",
            "flops_per_token", "latency_ms_b1", "latency_ms_b32", "seconds"]
    out["sweep"] = res[cols].to_dict(orient="records")
    out["h2"] = cnb.stats.h2_table(res, "ablation", quality="pairs_per_prompt_cos_retained").to_dict(orient="records")
    out["h2_abs"] = cnb.stats.h2_table(res, "ablation-abs", quality="pairs_per_prompt_cos_retained").to_dict(
        orient="records")
    # physical = masked on one selection, on the held-out sentences' pooled embeddings
    sentences = [s for p in zip(held.sentence1, held.sentence2) for s in p]
    phys = cnb.prune(model, scores["ablation"], 0.5, physical=True, fill=a.fill, task=task)
    masked = cnb.prune(model, scores["ablation"], 0.5, physical=False, fill=a.fill, task=task)
    e_p, e_m = cnb.sentence_embeddings(phys, sentences), cnb.sentence_embeddings(masked, sentences)
    out["physical_vs_masked_max_rel"] = float((e_p - e_m).abs().max() / e_m.abs().max())
    out["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return out


if __name__ == "__main__":
    main()
