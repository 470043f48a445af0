"""Findings of a run, in plain words with their numbers, derived from the files the notebooks write.

Each ``derive_*`` function reads one notebook's result file in a run folder and returns
findings in the schema of ``causal_nb.notebook.report`` (``{"title", "text", "table"?, "figure"?}``)
plus two keys the report fills in: ``source`` (the result file) and ``figures`` (figure
stems of notebook 04 that belong to the finding). Nothing about the results is written
here in advance: every sentence is built from the numbers in the files, so a run whose
numbers change gets other sentences.
"""

from __future__ import annotations

import math
import re

import pandas as pd

__all__ = ["ALPHA", "BUILTIN", "derive_acdc", "derive_h1", "derive_h2", "derive_summary", "derive_token_sets",
           "fmt_p", "sparsities_from_results", "verdict"]

ALPHA = 0.05  # significance level of the H2 verdicts (Holm-corrected p-values)


def fmt_p(p) -> str:
    """A p-value for a sentence: ``"p < 0.001"``, ``"p = 0.031"``, ``"p = 1"``."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _n(x, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _plural(unit: str) -> str:
    return unit if unit.endswith("s") else f"{unit}s"


def derive_summary(data) -> list[dict]:
    """Notebook 00 (``00_summary.json``): is the model a language model on the prompts?

    The loss per domain against the unigram baseline of the training corpus.
    """
    rows = data.get("losses", []) if isinstance(data, dict) else data
    df = pd.DataFrame(rows)
    if df.empty or not {"domain", "loss"} <= set(df.columns):
        return []
    model = data.get("model", "the model") if isinstance(data, dict) else "the model"
    parts = []
    for r in df.to_dict(orient="records"):
        uni = r.get("unigram", float("nan"))
        if uni is None or (isinstance(uni, float) and math.isnan(uni)):
            parts.append(f"{_n(r['loss'])} nats on {r['domain']} (no unigram baseline)")
        else:
            parts.append(f"{_n(r['loss'])} nats on {r['domain']} against {_n(uni)} for the unigram baseline "
                         f"({'below it by' if uni > r['loss'] else 'ABOVE it by'} {_n(abs(uni - r['loss']))})")
    below = "unigram" in df and bool((df.unigram > df.loss).all())
    head = (f"{model} predicts the held-out prompts better than word frequencies alone" if below
            else f"{model} on the held-out prompts")
    return [{"title": "The model on its prompts", "text": f"{head}: mean next-token loss " + "; ".join(parts) + ".",
             "table": df.to_dict(orient="records")}]


def derive_token_sets(rows) -> list[dict]:
    """Notebook 01 (``01_token_set_separation.json``): do the token sets tell the domains apart?

    Each row is a token set ``A__B (B tokens)``, characteristic of domain B against A, with
    its log probability mass on each domain's held-out prompts (columns ``on <domain>``).
    """
    df = pd.DataFrame(rows)
    on = [c for c in df.columns if c.startswith("on ")]
    if df.empty or "token_set" not in df or len(on) < 2:
        return []
    parts, table = [], []
    for r in df.to_dict(orient="records"):
        m = re.match(r"\s*([^_\s]+)__([^_\s]+)", str(r["token_set"]))
        own, other = (m.group(2), m.group(1)) if m else (None, None)
        if own is None or f"on {own}" not in r or f"on {other}" not in r:
            parts.append(f"{r['token_set']}: log mass " + ", ".join(f"{_n(r[c])} {c}" for c in on))
            continue
        sep = r[f"on {own}"] - r[f"on {other}"]
        word = "separates the domains" if sep > 0 else "does NOT separate the domains"
        parts.append(f"the {own} token set (against {other}) {word}: log mass {_n(r[f'on {own}'])} on {own} prompts vs "
                     f"{_n(r[f'on {other}'])} on {other} prompts, {sep:+.2f} nats ({math.exp(sep):.1f}x the mass)")
        table.append({"token_set": r["token_set"], "own_domain": own, "other_domain": other,
                      "log_mass_own": r[f"on {own}"], "log_mass_other": r[f"on {other}"], "separation_nats": round(sep, 4),
                      "mass_ratio": round(math.exp(sep), 4)})
    text = "\n".join(f"On held-out prompts, {p}." for p in parts)
    return [{"title": "Token sets: domain separation", "text": text,
             "table": table or df.to_dict(orient="records"), "figures": ["token_set_bars"]}]


def derive_h1(rows, reference: str = "exact ablation") -> list[dict]:
    """H1 (``03_hypotheses.json["h1"]``, or notebook 02's ``02_agreement_with_ablation.json``):
    which method ranks units most like the reference, per model and unit kind."""
    df = pd.DataFrame(rows)
    if df.empty or not {"model", "unit", "method", "spearman"} <= set(df.columns):
        return []
    parts, table = [], []
    for (model, unit), g in df.groupby(["model", "unit"], sort=False):
        g = g.sort_values("spearman", ascending=False)
        best, worst = g.iloc[0], g.iloc[-1]
        n = f" ({int(best['n_units'])} units)" if "n_units" in g and pd.notna(best.get("n_units")) else ""
        top = ""
        if "topk_overlap" in g and pd.notna(best.get("topk_overlap")):
            k = f"top-{int(best['k'])}" if "k" in g and pd.notna(best.get("k")) else "top-k"
            top = f", {k} overlap {_n(best['topk_overlap'])}"
        ref = g["reference"].iloc[0] if "reference" in g else reference  # per unit kind, where the rows say it
        ref = "exact ablation" if ref == "ablation" else ref
        parts.append(f"on {model} {_plural(unit)}{n}, {best['method']} ranks units most like {ref} "
                     f"(Spearman {_n(best['spearman'])}{top}) and {worst['method']} least (Spearman {_n(worst['spearman'])})")
        table.append({"model": model, "unit": unit, "best": best["method"], "best_spearman": best["spearman"],
                      "worst": worst["method"], "worst_spearman": worst["spearman"], "methods": len(g)})
    text = "\n".join(p[0].upper() + p[1:] + "." for p in parts)
    return [{"title": "H1: does importance predict the effect of removing a unit?", "text": text[0].upper() + text[1:],
             "table": table, "figures": ["head_importance"]}]


def verdict(ratio, p_holm, alpha: float = ALPHA) -> str:
    """``"significantly more"``, ``"more, not significantly"`` or ``"not more"``: did the
    reference retain more quality than a method (ratio reference / method, one-sided
    Holm-corrected p-value)?"""
    if ratio is not None and ratio > 1 and p_holm is not None and p_holm < alpha:
        return "significantly more"
    return "more, not significantly" if ratio is not None and ratio > 1 else "not more"


def derive_h2(rows, reference: str = "the reference method", sparsities: dict | None = None,
              quality: str = "top-1 agreement with the full model") -> list[dict]:
    """H2 (``03_hypotheses.json["h2_at_max_sparsity"]``, ``causal_nb.stats.h2_summary`` rows):
    did the reference selection retain more quality than each other method at the highest
    sparsity, per model and unit kind?

    Args:
        rows: ``h2_summary`` records (``model, unit, method, retained, ci_low, ci_high,
            ratio_ref_over_method, p_holm``; ``reference`` and ``sparsity`` where kept).
        reference: the reference method's name when the rows do not say it.
        sparsities: ``(model, unit) -> sparsity`` when the rows do not say it (from
            ``03_results.csv``).
        quality: what "retained quality" measures, for the sentence.
    """
    df = pd.DataFrame(rows)
    need = {"model", "unit", "method", "retained", "ci_low", "ci_high", "ratio_ref_over_method", "p_holm"}
    if df.empty or not need <= set(df.columns):
        return []
    out = []
    for (model, unit), g in df.groupby(["model", "unit"], sort=False):
        ref = g["reference"].iloc[0] if "reference" in g else reference
        s = g["sparsity"].iloc[0] if "sparsity" in g else (sparsities or {}).get((model, unit))
        at = f"at {s:.0%} sparsity" if s is not None else "at the highest sparsity"
        v = [verdict(r.ratio_ref_over_method, r.p_holm) for r in g.itertuples()]
        rs = list(g.itertuples())
        sig = [r for r, x in zip(rs, v, strict=True) if x == "significantly more"]
        ns = [r for r, x in zip(rs, v, strict=True) if x == "more, not significantly"]
        worse = [r for r, x in zip(rs, v, strict=True) if x == "not more"]
        kept = [r.ratio_ref_over_method * r.retained for r in rs if r.retained and math.isfinite(r.ratio_ref_over_method)]
        ref_q = f" ({ref} retained {_n(sorted(kept)[len(kept) // 2])})" if kept else ""
        if sig:
            head = (f"{ref} selection retained significantly more quality{ref_q} than "
                    + ("every other method" if len(sig) == len(rs) else f"{len(sig)} of the {len(rs)} other methods") + ": "
                    + "; ".join(f"{r.method} (ratio {_n(r.ratio_ref_over_method)}, {r.method} retained {_n(r.retained)}, "
                                f"95% CI {_n(r.ci_low)}-{_n(r.ci_high)}, Holm {fmt_p(r.p_holm)})" for r in sig))
        else:
            head = (f"{ref} selection did NOT retain significantly more quality{ref_q} than any of the {len(rs)} other "
                    "methods")
        tail = []
        if ns:
            tail.append("more, but not significantly, than " + ", ".join(
                f"{r.method} (ratio {_n(r.ratio_ref_over_method)}, {r.method} retained {_n(r.retained)}, 95% CI "
                f"{_n(r.ci_low)}-{_n(r.ci_high)}, Holm {fmt_p(r.p_holm)})" for r in ns))
        if worse:
            tail.append("no more quality than " + ", ".join(f"{r.method} (ratio {_n(r.ratio_ref_over_method)})" for r in worse))
        text = (f"On {model} {_plural(unit)} {at}, {head}." + "".join(f"\nIt retained {t}." for t in tail) +
                f"\nRetained quality: {quality}; ratio = {ref} / method; one-sided paired Wilcoxon tests, "
                f"Holm-corrected, significant below {ALPHA}.")
        table = g.drop(columns=[c for c in ("model", "unit") if c in g]).assign(verdict=v).to_dict(orient="records")
        out.append({"title": f"H2 on {model} {_plural(unit)}: causal selection at high sparsity", "text": text,
                    "table": table, "figures": [f"degradation_{_plural(unit)}", "pareto_params"]})
    return out


def derive_acdc(df: pd.DataFrame, n_units_word: str = "units") -> list[dict]:
    """ACDC thresholds (``03_acdc.csv``, ``causal_nb.acdc_sweep``): how much each
    threshold removes and what the pruned model keeps on held-out prompts."""
    need = {"tau", "removed", "units"}
    if df.empty or not need <= set(df.columns):
        return []
    parts = []
    for r in df.to_dict(orient="records"):
        p = f"threshold {r['tau']:g} removes {int(r['removed'])} of {int(r['units'])} {n_units_word}"
        if "eval_top1" in r:
            p += f" (held-out top-1 agreement {_n(r['eval_top1'])}"
            p += f", KL {_n(r['eval_kl'], 3)})" if "eval_kl" in r else ")"
        parts.append(p)
    return [{"title": "ACDC: a KL threshold chooses the sparsity", "text": "ACDC (first model): " + "; ".join(parts) + ".",
             "table": df.to_dict(orient="records")}]


# result file -> what derives findings from it; 02's agreement is H1 only where 03 did not run
BUILTIN: dict[str, str] = {
    "00_summary.json": "the model's loss on its prompts (notebook 00)",
    "01_token_set_separation.json": "token-set separation (notebook 01)",
    "02_agreement_with_ablation.json": "H1, rank agreement with exact ablation (notebook 02)",
    "03_hypotheses.json": "H1 and H2 verdicts (notebook 03)",
    "03_acdc.csv": "ACDC thresholds (notebook 03)",
}


def sparsities_from_results(df: pd.DataFrame) -> dict:
    """``(model, unit) -> highest sparsity`` of a sweep table (``03_results.csv``)."""
    if not {"model", "unit", "sparsity"} <= set(df.columns):
        return {}
    return {k: float(v) for k, v in df.groupby(["model", "unit"]).sparsity.max().items()}
