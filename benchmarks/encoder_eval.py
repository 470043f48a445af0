"""An encoder on the shipped Tatoeba sets: paraphrase similarity and a question/statement probe.

    python benchmarks/encoder_eval.py                      # all-MiniLM-L6-v2, full sets (~2 min on 1 CPU thread)
    python benchmarks/encoder_eval.py --model DIR --n 100  # any BERT folder, first n rows of each split

Prints one JSON object: Spearman (cosine vs gold 1/0) with its 95% bootstrap interval and ROC
AUC (overall and against each kind of negative) on the train and test pair sets, and the probe's
test accuracy and macro F1 (trained on the train sentences) beside the majority-class accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import causal_nb as cnb


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--n", type=int, default=None, help="use only the first n rows of each split")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    model = cnb.load_model(a.model, device="cpu")
    out: dict = {"model": a.model}
    for split in ("train", "test"):
        t0 = time.perf_counter()
        r = cnb.similarity_eval(model, cnb.load_sentence_pairs("tatoeba-paraphrase", split).iloc[:a.n], n_boot=a.n_boot)
        r.pop("cosine")
        out[f"paraphrase_{split}"] = {**r, "seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    probe = cnb.probe_eval(model, cnb.load_sentence_labels("tatoeba-questions", "train").iloc[:a.n],
                           cnb.load_sentence_labels("tatoeba-questions", "test").iloc[:a.n])
    out["questions_probe"] = {**probe, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
