"""Peer benchmark: Torch-Pruning's MetaPruner against the kit's causal selections on the bundled ViT.

    OMP_NUM_THREADS=1 python benchmarks/bench_vit.py --budgets 0.5 --finetune-epochs 3 --finetune-steps 0 \
        --finetune-distill 0.5 --finetune-no-augment --n-test-images 10000    # the recorded run (~1 h)
    OMP_NUM_THREADS=1 python benchmarks/bench_vit.py --finetune-epochs 0 --n-test-images 10000   # speed only (~6 min)
    python benchmarks/bench_vit.py --budgets 0.5 --finetune-steps 20 --n-test-images 1000   # a quick look

At each budget (the share of attention heads and of MLP neurons removed, the same share of each
kind, e.g. 25% and 50%) the bundled ``vit-fashion-mnist`` is pruned physically four ways:

- **Torch-Pruning** 1.6 ``MetaPruner`` (``tp.pruner.MetaPruner``) on the plain Hugging Face model,
  with its ``MagnitudeImportance(p=2)`` and its ``TaylorImportance`` (gradients of the training
  cross-entropy over ``--taylor-batches`` training batches), set up as its own HF ViT example
  (``examples/transformers/prune_hf_vit.py``) does: ``num_heads`` for ``q_proj``/``k_proj``/``v_proj``,
  here ``prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=budget`` (whole heads,
  as the kit removes them) and ``pruning_ratio=budget`` for the MLP neurons; the residual stream is
  kept (the patch embedding, each block's output projections and the classifier are
  ``ignored_layers``), so both tools remove exactly the same numbers of weights; per-layer
  uniform (TP's default), and after pruning each attention's ``num_attention_heads`` is set from
  its ``q_proj`` rows, as the example does with ``num_attention_heads``/``all_head_size``;
- **the kit**: ``cnb.score`` by exact ablation (``"ablation"``: KL from the dense model when the unit
  is zeroed) and by |attribution| (``"attribution-abs"``, EAP's |gradient x activation| on the task
  loss), on ``--n-score-images`` validation images, then ``cnb.prune(..., physical=True)`` (global
  budget, at least one head per layer); the ``... per-layer`` rows prune by the same scores with
  TP's allocation (``budget="per_layer"``: the same share of every layer), so that they differ
  from TP's only in which units they rank low.

Every pruned model (and the dense one, for reference) is then put through the *same* recovery
fine-tuning (``cnb.finetune_vit``: the bundled model's training loop, AdamW, cosine, seeded,
on the training split), and measured on the first ``--n-test-images`` test images before and after,
and for throughput (images/s of the plain Hugging Face forward at batch 1 and 64, median of
``--repeats`` rounds that visit the models in turn, so a busy spell on a shared machine hits all
of them alike). One table, printed as Markdown, one JSON with ``--out``.

Each pruned row is also compared, on the same test images, with the better Torch-Pruning row at
its budget (``paired_vs``: the top-1 difference with scipy's paired bootstrap interval and
McNemar's exact test), printed as a second table.

Measured 2026-12-04 on the d_model-128 bundled model (benchmarks/RESULTS.md; ``--budgets 0.5
--finetune-epochs 3 --finetune-steps 0 --finetune-distill 0.5 --finetune-no-augment`` with the
per-layer ablation row, 3,472 s on 1 thread): at 50% removed kit |attribution| 0.9066 (-0.26
points from the dense 0.9092), TP magnitude 0.8991, paired +0.75 points [+0.33, +1.15], McNemar
p = 0.001; throughput at batch 64 1.89x for the per-layer kit row, 1.70-1.72x for the
global-budget kit rows, 1.80-1.83x for TP.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import causal_nb as cnb

KIT_SCORES = {"kit ablation": ("ablation", {"metric": "kl", "kind": "zero"}),
              "kit attribution-abs": ("attribution-abs", {"kind": "zero"})}
#: The same scores with TP's allocation, the same share of each layer's heads and neurons
#: (``cnb.prune(budget="per_layer")``): the selections then differ only in which units they rank low.
PER_LAYER = {f"{name} per-layer": name for name in KIT_SCORES}
TP_IMPORTANCES = ("tp magnitude", "tp taylor")


def load_hf(folder):
    """The plain Hugging Face ViT of a model folder."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(str(folder)).eval()


def tp_prune(hf, removed: float, importance: str, train=None, taylor_batches: int = 4, batch_size: int = 128):
    """A copy of ``hf`` with ``removed`` of each layer's heads and MLP neurons pruned by Torch-Pruning.

    Args:
        hf: a ``ViTForImageClassification`` (left unchanged).
        removed: the share of heads (per layer) and of MLP neurons (per layer) removed.
        importance: ``"tp magnitude"`` (L2 of the coupled weights) or ``"tp taylor"``.
        train: the training split (``ImageSet``) whose cross-entropy gradients Taylor reads.
        taylor_batches: batches of ``batch_size`` training images accumulated for Taylor.
    """
    import torch_pruning as tp

    model = copy.deepcopy(hf).eval()
    emb = model.vit.embeddings
    num_heads, ignored = {}, [model.classifier, emb.patch_embeddings.projection]
    for layer in model.vit.layers:
        att = layer.attention
        for m in (att.q_proj, att.k_proj, att.v_proj):
            num_heads[m] = att.num_attention_heads
        ignored += [att.o_proj, layer.mlp.fc2]  # their outputs are the residual stream, which stays whole
    imp = tp.importance.MagnitudeImportance(p=2) if importance == "tp magnitude" else tp.importance.TaylorImportance()
    example = torch.zeros(1, *emb.patch_embeddings.projection.weight.shape[1:2], model.config.image_size,
                          model.config.image_size)
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=removed, ignored_layers=ignored,
                                  num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=removed, global_pruning=False,
                                  output_transform=lambda out: out.logits.sum(),
                                  unwrapped_parameters=[(emb.cls_token, 2), (emb.position_embeddings, 2)])
    if importance == "tp taylor":
        if train is None:
            raise ValueError("tp taylor needs the training split (train=) for its gradients")
        model.zero_grad()
        for i in range(taylor_batches):
            x, y = train.images[i * batch_size:(i + 1) * batch_size], train.labels[i * batch_size:(i + 1) * batch_size]
            torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
    for group in pruner.step(interactive=True):
        group.prune()
    for layer in model.vit.layers:
        att = layer.attention
        att.num_attention_heads = att.q_proj.out_features // att.head_dim
    model.zero_grad(set_to_none=True)
    return model.eval()


def kit_scores(bridge, score: str, task) -> list:
    """The kit's head and neuron tables by ``score`` (a ``KIT_SCORES`` or ``PER_LAYER`` key)."""
    method, kw = KIT_SCORES[PER_LAYER.get(score, score)]
    return [cnb.score(bridge, task=task, method=method, unit=u, progress=False, **kw) for u in ("head", "neuron")]


def kit_prune(bridge, removed: float, tables: list, task, budget: str = "global"):
    """The plain HF model of the bridge pruned physically by the kit at ``removed`` of each kind
    (``budget``: ``"global"``, the lowest scores anywhere, or ``"per_layer"``, TP's allocation)."""
    # sdpa attention, as the dense and TP models have it from `from_pretrained` (the bridge's eager
    # attention would cost the kit's rows ~12% of their throughput: not a property of the selection)
    return cnb.models.hf.plain_hf(cnb.prune(bridge, tables, removed, physical=True, task=task, budget=budget),
                                  attn_implementation="sdpa").eval()


@torch.inference_mode()
def correct_of(hf, data, batch_size: int = 500) -> torch.Tensor:
    """Per-image correctness (bool, one per image of ``data``): top-1 is its mean, and two models'
    vectors on the same images give the paired comparison (``paired_vs``)."""
    hf.eval()
    return torch.cat([hf(pixel_values=data.images[i:i + batch_size]).logits.argmax(-1) == data.labels[i:i + batch_size]
                      for i in range(0, len(data), batch_size)])


def paired_vs(a, b, n_resamples: int = 2000, level: float = 0.95) -> dict:
    """Model ``a`` against model ``b`` on the same images (their per-image correctness).

    The difference in top-1 with a paired percentile-bootstrap interval (``scipy.stats.bootstrap``,
    ``paired=True``, seed 0) and McNemar's exact test (a two-sided binomial test on the images
    exactly one of the two gets right), both from scipy.

    Returns:
        ``diff`` (top-1 of a minus b), ``lo``/``hi`` (the interval), ``a_only``/``b_only`` (the
        discordant counts) and ``p_mcnemar``.
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_vs needs two equal-length 1-D correctness vectors (got {a.shape} and {b.shape})")
    a_only, b_only = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = 1.0 if a_only + b_only == 0 else float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    if a_only + b_only == 0:  # identical predictions: the interval is the point
        lo = hi = 0.0
    else:
        ci = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                             n_resamples=n_resamples, confidence_level=level, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    return {"diff": float(a.mean() - b.mean()), "lo": lo, "hi": hi, "a_only": a_only, "b_only": b_only,
            "p_mcnemar": p}


def final_top1(row: dict) -> float:
    """A row's top-1 after fine-tuning, or before when none ran (``--finetune-epochs 0``)."""
    return row["top1_before"] if row["top1_after"] is None else row["top1_after"]


def paired_table(rows: list[dict], correct: dict) -> str:
    """Every pruned row against the best Torch-Pruning row at its budget (after fine-tuning when it
    ran, else before), on the same test images: the question "does the best causal criterion at
    least match Torch-Pruning" as a difference with its interval, not as two rounded accuracies."""
    lines = ["| budget removed | method | vs | Δ top-1 (pts) | 95% CI (pts) | only this right | only TP right | "
             "McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for budget in dict.fromkeys(r["budget"] for r in rows):
        here = [r for r in rows if r["budget"] == budget]
        tp = [r for r in here if r["method"] in TP_IMPORTANCES]
        if not tp:
            continue
        ref = max(tp, key=final_top1)
        for r in here:
            if r is ref:
                continue
            c = paired_vs(correct[(budget, r["method"])], correct[(budget, ref["method"])])
            lines.append(f"| {budget} | {r['method']} | {ref['method']} | {100 * c['diff']:+.2f} | "
                         f"[{100 * c['lo']:+.2f}, {100 * c['hi']:+.2f}] | {c['a_only']} | {c['b_only']} | "
                         f"{c['p_mcnemar']:.3f} |")
            r["vs_best_tp"] = {"reference": ref["method"], **c}
    return "\n".join(lines) if len(lines) > 2 else ""


@torch.inference_mode()
def throughputs(models: dict, batches=(1, 64), repeats: int = 7, image_shape=(1, 28, 28), budget_s: float = 0.3):
    """Images/s per model and batch size: the median of ``repeats`` rounds, each round visiting every
    model in turn (each timing ~``budget_s`` seconds of forwards after one warm-up forward)."""
    out = {name: {} for name in models}
    for b in batches:
        x = torch.rand(b, *image_shape)
        inner = {}
        for name, m in models.items():  # warm up and size each model's timed loop
            m(pixel_values=x)
            t0 = time.perf_counter()
            m(pixel_values=x)
            inner[name] = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-6)))
        samples = {name: [] for name in models}
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                for _ in range(inner[name]):
                    m(pixel_values=x)
                samples[name].append(b * inner[name] / (time.perf_counter() - t0))
        for name in models:
            out[name][b] = statistics.median(samples[name])
    return out


def n_params(hf) -> int:
    return int(sum(p.numel() for p in hf.parameters()))


def table(rows: list[dict], dense: dict) -> str:
    head = ("| budget removed | method | params | top-1 before FT | top-1 after FT | Δ vs dense (pts) | img/s b=1 | "
            "x dense | img/s b=64 | x dense |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in [dense, *rows]:
        final = final_top1(r)
        after = "-" if r["top1_after"] is None else f"{r['top1_after']:.4f}"
        lines.append(f"| {r['budget']} | {r['method']} | {r['params']:,} | {r['top1_before']:.4f} | "
                     f"{after} | {100 * (final - dense['top1_before']):+.2f} | "
                     f"{r['ips_1']:.0f} | {r['ips_1'] / dense['ips_1']:.2f} | {r['ips_64']:.0f} | "
                     f"{r['ips_64'] / dense['ips_64']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-fashion-mnist", help="bundled name or folder of the dense ViT")
    ap.add_argument("--data-dir", default=None, help="folder of the idx files")
    ap.add_argument("--val-size", type=int, default=5000, help="the model's validation split size")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5], help="shares of heads and neurons removed")
    ap.add_argument("--methods", nargs="+", default=[*TP_IMPORTANCES, *KIT_SCORES],
                    help="tp magnitude, tp taylor, kit ablation, kit attribution-abs, and the kit ones + \" per-layer\"")
    ap.add_argument("--n-score-images", type=int, default=128, help="validation images the kit's scores read")
    ap.add_argument("--taylor-batches", type=int, default=4, help="training batches (128) TP's Taylor reads")
    ap.add_argument("--n-test-images", type=int, default=5000, help="test images for top-1 (the first N)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="recovery epochs (0: none, e.g. a timing-only run)")
    ap.add_argument("--finetune-steps", type=int, default=250, help="steps per fine-tuning epoch (0: the whole split)")
    ap.add_argument("--finetune-lr", type=float, default=2e-4,
                    help="peak lr (the bundled model's last phase ran at 3e-4; 1e-3 for 100 steps costs the dense "
                         "model 1.8 points)")
    ap.add_argument("--finetune-distill", type=float, default=0.0,
                    help="weight of distillation from the dense model's logits (0: cross-entropy only)")
    ap.add_argument("--finetune-seed", type=int, default=0, help="fine-tuning's data order (a second seed: is a tie a tie?)")
    ap.add_argument("--finetune-no-augment", action="store_true",
                    help="no random shifts and flips in fine-tuning (the bundled model's last phases ran without)")
    ap.add_argument("--repeats", type=int, default=7, help="timing rounds")
    ap.add_argument("--timing-s", type=float, default=0.3, help="seconds of forwards per model in each round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--finetune-device", default="cpu",
                    help="where the recovery fine-tuning runs (cuda: minutes, not hours); accuracy and throughput "
                         "are measured on the CPU either way")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    bad = [m for m in a.methods if m not in (*TP_IMPORTANCES, *KIT_SCORES, *PER_LAYER)]
    if bad or any(not 0 < b < 1 for b in a.budgets):
        raise SystemExit(f"unknown methods {bad} or budgets outside (0, 1): {a.budgets}")
    if a.finetune_epochs < 0:
        raise SystemExit(f"--finetune-epochs {a.finetune_epochs}: pass 0 (no recovery) or more")
    try:
        ft_dev = cnb.resolve_device(a.finetune_device, flag="--finetune-device", allowed=("cpu", "cuda"))
    except cnb.DeviceError as e:
        raise SystemExit(str(e)) from None
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    bridge = cnb.load_model(a.model, device="cpu")
    dense = cnb.models.hf.plain_hf(bridge).eval()
    train = cnb.load_fashion_mnist("train", a.data_dir, val_size=a.val_size)
    val = cnb.load_fashion_mnist("val", a.data_dir, val_size=a.val_size)
    test = cnb.load_fashion_mnist("test", a.data_dir).head(a.n_test_images)
    task = cnb.ImageClassificationTask(val.images[:a.n_score_images], val.labels[:a.n_score_images])
    # --finetune-epochs 0: no recovery (a quick look at the selections, or a timing-only run)
    ft = None if a.finetune_epochs == 0 else cnb.FinetuneConfig(
        epochs=a.finetune_epochs, steps=a.finetune_steps or None, lr=a.finetune_lr, seed=a.finetune_seed,
        augment=not a.finetune_no_augment, distill=a.finetune_distill)
    # never trained (the fine-tuned models are copies); on the fine-tuning device
    teacher = (copy.deepcopy(dense).to(ft_dev) if ft_dev.type != "cpu" else dense) if a.finetune_distill > 0 else None

    def recover(hf):
        """Recovery fine-tuning on ``--finetune-device``, the model back on the CPU after."""
        rec = cnb.finetune_vit(hf.to(ft_dev), train, None, ft, progress=not a.no_progress, teacher=teacher)
        hf.cpu()
        return rec

    pruned, rows, tables, score_s, correct = {}, [], {}, {}, {}
    for m in a.methods:  # each ranking once (shared by its per-layer row), pruned at every budget
        if m in KIT_SCORES or m in PER_LAYER:
            base = PER_LAYER.get(m, m)
            if base not in tables:
                t0 = time.perf_counter()
                tables[base] = kit_scores(bridge, base, task)
                score_s[base] = time.perf_counter() - t0
            tables[m], score_s[m] = tables[base], score_s[base]
    for b in a.budgets:
        for m in a.methods:
            t0 = time.perf_counter()
            hf = tp_prune(dense, b, m, train, a.taylor_batches) if m in TP_IMPORTANCES else kit_prune(
                bridge, b, tables[m], task, "per_layer" if m in PER_LAYER else "global")
            prune_s = time.perf_counter() - t0 + score_s.get(m, 0.0)
            before = correct_of(hf, test)
            row = {"budget": f"{b:.0%}", "method": m, "params": n_params(hf), "prune_s": prune_s,
                   "top1_before": float(before.float().mean()), "top1_after": None, "finetune_s": 0.0,
                   "train_loss": []}
            correct[(row["budget"], m)] = before  # replaced by the fine-tuned model's, when it runs
            if ft is not None:
                rec = recover(hf)
                correct[(row["budget"], m)] = correct_of(hf, test)
                row.update(top1_after=float(correct[(row["budget"], m)].float().mean()), finetune_s=rec["seconds"],
                           train_loss=rec["train_loss"])
            if not a.no_progress:
                print(f"{row['budget']} {m}: {row['params']:,} params, top-1 {row['top1_before']:.4f} -> "
                      f"{final_top1(row):.4f} ({row['prune_s']:.0f} s + {row['finetune_s']:.0f} s)", flush=True)
            pruned[(row["budget"], m)] = hf
            rows.append(row)
    dense_row = {"budget": "0%", "method": "dense", "params": n_params(dense),
                 "top1_before": float(correct_of(dense, test).float().mean()), "top1_after": None}
    if ft is not None:
        tuned = copy.deepcopy(dense)
        recover(tuned)
        dense_row["top1_after"] = float(correct_of(tuned, test).float().mean())
    ips = throughputs({"dense": dense, **{k: v for k, v in pruned.items()}}, repeats=a.repeats, budget_s=a.timing_s)
    dense_row.update(ips_1=ips["dense"][1], ips_64=ips["dense"][64])
    for r in rows:
        r.update(ips_1=ips[(r["budget"], r["method"])][1], ips_64=ips[(r["budget"], r["method"])][64])
    md, paired = table(rows, dense_row), paired_table(rows, correct)
    print(md)
    if paired:
        print(f"\nPaired on the same {len(test)} test images ({'after' if ft else 'before'} fine-tuning):\n{paired}")
    if ft is None:
        how = "no fine-tuning (--finetune-epochs 0)"
    else:
        how = (f"fine-tuning (seed {a.finetune_seed}): {a.finetune_epochs} epoch(s) x {a.finetune_steps} steps of 128 "
               f"training images, lr "
               f"{a.finetune_lr}, augmentation {'off' if a.finetune_no_augment else 'on'}, distillation "
               f"{a.finetune_distill}, the same for every row (dense fine-tuned the same way: top-1 "
               f"{dense_row['top1_after']:.4f}; the Δ column is against the dense model as shipped, "
               f"{dense_row['top1_before']:.4f})")
    how += f" on {ft_dev}" if ft is not None else ""
    print(f"\n{len(test)} test images; {how}; {a.threads} thread(s); {time.perf_counter() - t_start:.0f} s in all")
    result = {"args": vars(a), "dense": dense_row, "rows": rows, "table": md, "paired_table": paired}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
