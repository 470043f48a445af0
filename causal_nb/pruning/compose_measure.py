"""Composable pruning, step 4: time to equal quality, composed arm against the baseline, for a family.

Both arms fine-tune every configuration of a scheme end to end with the same settings, recording
the held-out loss every ``eval_every`` steps (``compare_arms``): the *composed* arm starts from
the module-level fine-tuned variants (each distinct variant trained once for the whole family),
the *baseline* from direct pruning. ``equal_quality`` then reads the curves:

* **Target** of configuration ``k`` under a rule: ``(1 + tol) x`` a reference loss, where the
  reference is ``"baseline"``: the lowest held-out loss the baseline reached within its step
  cap (the issue's rule: "loss within 1% of the baseline's best"), or ``"best"``: the lowest
  held-out loss either arm reached (the stricter one: the arm that did not reach it is ``> cap``).
* **Steps to target**: the first *evaluated* model-level step whose held-out loss is at or below
  the target (step 0 counts: a composed model may start there); seconds to target: the training
  seconds up to that step (evaluations excluded, in both arms).
* **BLEU** (a T5's curves with a ``val_bleu`` column, ``bleu_curve_pairs``): rule ``"bleu"``, the
  issue's other measure: the target is the baseline's best BLEU within its cap minus ``bleu_tol``
  points (0.5), and an arm's steps to target its first evaluated step at or *above* it; its rows
  give BLEU in the ``*_start``/``*_best``/``*_final`` columns (``measure`` says which).
* **Family totals**: the composed arm's module-level time (every variant the family uses, once)
  plus its model-level time to target for every configuration, against the baseline's time to
  target for every configuration. A configuration that never reaches the target counts its
  whole cap, and the total is then a lower bound (``*_lower_bound``).
* **Cost**: wall seconds move with other work on a shared machine, so each total is also given as
  steps x the median seconds per step (per configuration for model steps, both arms pooled;
  per variant for module steps, plus its share of the one dense capture pass).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .compose_scheme import ComposeError

__all__ = ["RULES", "compare_arms", "config_rates", "equal_quality", "steps_to_target"]

RULES = ("baseline", "best")
ARMS = ("composed", "baseline")
CURVE_COLUMNS = ("config", "arm", "step", "train_loss", "val_loss", "seconds")


def steps_to_target(curve: pd.DataFrame, target: float, column: str = "val_loss") -> tuple[int | None, float | None]:
    """``(step, seconds)`` of the first evaluated row of a curve at the target (``val_loss <=
    target``; a ``val_bleu`` column: ``>= target``), ``(None, None)`` when no evaluation reaches it."""
    v = curve[column]
    hit = curve[v.notna() & ((v >= target) if column == "val_bleu" else (v <= target))]
    if hit.empty:
        return None, None
    row = hit.sort_values("step").iloc[0]
    return int(row.step), float(row.seconds)


def config_rates(scheme: dict, k: int) -> dict[str, str]:
    """The pruning rates configuration ``k`` uses, by kind (``"0.25"``; several joined by ``/``
    where the configuration file sets them per module; ``"0"`` where that kind stays dense)."""
    by_key = {v["key"]: v for v in scheme["variants"]}
    rates: dict[str, set] = {"attention": set(), "linear": set()}
    for key in scheme["configurations"][str(k)].values():
        rates[by_key[key]["kind"]].add(by_key[key]["rate"])
    return {kind: "/".join(f"{r:g}" for r in sorted(rs)) or "0" for kind, rs in rates.items()}


def _median_step_seconds(curves: pd.DataFrame) -> float:
    steps = []
    for _, c in curves.groupby("arm"):
        c = c.sort_values("step")
        steps += list(np.diff(c.seconds.to_numpy())[np.diff(c.step.to_numpy()) == 1])
    return float(np.median(steps)) if steps else float("nan")


def _check_curves(curves: pd.DataFrame, scheme: dict) -> list[int]:
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ComposeError(f"the curve table lacks columns {missing} (compare_arms writes them: {list(CURVE_COLUMNS)})")
    configs = sorted(int(k) for k in curves.config.unique())
    for k in configs:
        if str(k) not in scheme["configurations"]:
            raise ComposeError(f"the curves have configuration {k}, the scheme only 1..{len(scheme['configurations'])}; "
                               "use the scheme the runs were made from")
        arms = set(curves[curves.config == k].arm)
        if arms != set(ARMS):
            raise ComposeError(f"configuration {k} has curves for {sorted(arms)}: both arms {ARMS} are needed")
    return configs


def _has_bleu(curves: pd.DataFrame) -> bool:
    return "val_bleu" in curves.columns and bool(curves.val_bleu.notna().any())


def equal_quality(curves: pd.DataFrame, module: pd.DataFrame, scheme: dict,
                  tol: float = 0.01, bleu_tol: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration and family totals of the time each arm needs to reach the same quality.

    Args:
        curves: one row per step and arm (``CURVE_COLUMNS``; ``val_loss`` NaN where not evaluated,
            ``seconds`` the cumulative training time).
        module: one row per variant: ``key``, ``steps``, ``seconds`` (its module-level time,
            its share of the capture included), ``seconds_per_step`` (median), ``setup_seconds``
            (its share of the capture).
        scheme: the family's scheme (which variants each configuration uses).
        tol: the relative tolerance of "the same quality" (0.01: within 1%).
        bleu_tol: BLEU points below the baseline's best that count as the same quality (rule
            ``"bleu"``, only where the curves carry ``val_bleu``).

    Returns:
        ``(configs, family)``: per configuration and rule (``measure`` "loss" or "bleu"), each arm's best and final loss, target,
        steps and seconds to it (NaN: not reached within the cap); per rule, the family totals,
        the ratios baseline / composed of seconds and of cost, and whether the totals are lower
        bounds.
    """
    if not 0 <= tol < 1:
        raise ComposeError(f"tol {tol!r} must be in [0, 1) (0.01: within 1%)")
    if not bleu_tol >= 0:
        raise ComposeError(f"bleu_tol {bleu_tol!r} must be >= 0 (BLEU points; 0.5: within half a point)")
    configs = _check_curves(curves, scheme)
    module = module.set_index("key")
    rules = [*RULES, "bleu"] if _has_bleu(curves) else list(RULES)
    rows = []
    for k in configs:
        cur = {arm: curves[(curves.config == k) & (curves.arm == arm)].sort_values("step") for arm in ARMS}
        cap = {arm: int(c.step.max()) for arm, c in cur.items()}
        per_step = _median_step_seconds(curves[curves.config == k])
        rates = config_rates(scheme, k)
        for rule in rules:
            col = "val_bleu" if rule == "bleu" else "val_loss"
            evals = {arm: c.dropna(subset=[col])[col] for arm, c in cur.items()}
            best = {arm: float(v.max() if rule == "bleu" else v.min()) for arm, v in evals.items()}
            if rule == "bleu":
                target = best["baseline"] - bleu_tol
            else:
                target = (1 + tol) * (best["baseline"] if rule == "baseline" else min(best.values()))
            row = {"config": k, "attention": rates["attention"], "linear": rates["linear"], "rule": rule,
                   "measure": "bleu" if rule == "bleu" else "loss", "target": target, "s_per_step": per_step}
            for arm in ARMS:
                step, sec = steps_to_target(cur[arm], target, col)
                row.update({f"{arm}_start": float(cur[arm][col].iloc[0]), f"{arm}_best": best[arm],
                            f"{arm}_final": float(evals[arm].iloc[-1]), f"{arm}_cap": cap[arm],
                            f"{arm}_steps": np.nan if step is None else step,
                            f"{arm}_s": np.nan if sec is None else sec})
            rows.append(row)
    per = pd.DataFrame(rows)
    used = sorted({key for k in configs for key in scheme["configurations"][str(k)].values()})
    absent = [key for key in used if key not in module.index]
    if absent:
        raise ComposeError(f"no module-level record for variants {absent[:3]}: run finetune_variants for this scheme")
    mod = module.loc[used]
    module_cost = float((mod.steps * mod.seconds_per_step + mod.setup_seconds).sum())
    fam = []
    for rule in rules:
        r = per[per.rule == rule]
        tot = {}
        for arm in ARMS:
            steps = r[f"{arm}_steps"].fillna(r[f"{arm}_cap"])  # not reached: the whole cap, a lower bound
            secs = r[f"{arm}_s"].where(r[f"{arm}_steps"].notna(), r[f"{arm}_cap"] * r.s_per_step)
            tot[arm] = {"model_steps": int(steps.sum()), "model_s": float(secs.sum()),
                        "cost": float((steps * r.s_per_step).sum()), "lower_bound": bool(r[f"{arm}_steps"].isna().any())}
        comp_s = float(mod.seconds.sum()) + tot["composed"]["model_s"]
        comp_cost = module_cost + tot["composed"]["cost"]
        fam.append({"rule": rule, "configs": len(configs), "variants": len(used),
                    "module_steps": int(mod.steps.sum()), "module_s": float(mod.seconds.sum()),
                    "composed_model_steps": tot["composed"]["model_steps"], "composed_model_s": tot["composed"]["model_s"],
                    "composed_s": comp_s, "composed_cost_s": comp_cost,
                    "composed_lower_bound": tot["composed"]["lower_bound"],
                    "baseline_steps": tot["baseline"]["model_steps"], "baseline_s": tot["baseline"]["model_s"],
                    "baseline_cost_s": tot["baseline"]["cost"], "baseline_lower_bound": tot["baseline"]["lower_bound"],
                    "ratio_s": tot["baseline"]["model_s"] / comp_s if comp_s else np.nan,
                    "ratio_cost": tot["baseline"]["cost"] / comp_cost if comp_cost else np.nan})
    return per, pd.DataFrame(fam)


def compare_arms(scheme: dict, workdir, module_steps: int = 100, composed_steps: int = 50, baseline_steps: int = 200,
                 eval_every: int = 10, tol: float = 0.01, lr: float = 5e-5, module_lr: float = 1e-3,
                 batch_size: int = 8, n_windows: int = 32, seed: int = 0, executor=None,
                 data: dict | None = None) -> dict:
    """Run both arms on every configuration of the scheme and measure the time to equal quality.

    Prunes and module-level fine-tunes the variants (each once, resumable), then fine-tunes every
    configuration end to end, the baseline for ``baseline_steps`` and the composed arm for
    ``composed_steps``, both with the held-out loss every ``eval_every`` steps, and reads the
    curves with ``equal_quality``. Tables are written to ``<workdir>/compare/``.

    Args:
        lr, module_lr: the model-level (both arms) and module-level learning rates.
        n_windows: training windows whose inputs the module level captures from the dense model.
        executor: where the variants train (see ``finetune_variants``).
        data: data settings to replace (``compose_stages.data_settings``: ``n_files`` training files
            per domain, ``n_heldout`` held-out windows, ``n_files_heldout``, ``n_train`` pool).

    Returns:
        ``{"configs", "family"}`` (``equal_quality``), ``"curves"`` (both arms, every step) and
        ``"module"`` (per variant: steps, seconds, seconds per step, MSE before and after).
    """
    from .compose_stages import finetune_variants, prune_variants, run_configuration, shared_data  # noqa: PLC0415

    if min(module_steps, composed_steps, baseline_steps, eval_every) < 1:
        raise ComposeError("module_steps, composed_steps, baseline_steps and eval_every must be >= 1")
    workdir = Path(workdir)
    prune_variants(scheme, workdir, seed)
    done = finetune_variants(scheme, workdir, module_steps, module_lr, n_windows, seed, executor, data)
    module = pd.DataFrame([{"key": key, "steps": r["steps"], "seconds": r["seconds"],
                            "seconds_per_step": r.get("seconds_per_step", np.nan),
                            "setup_seconds": r.get("setup_share", 0.0),
                            "mse_before": r["mse_before"], "mse_after": r["mse_after"]} for key, r in done.items()])
    shared = shared_data(scheme, seed, data)
    curves = []
    for k in range(1, len(scheme["configurations"]) + 1):
        for arm, steps in (("baseline", baseline_steps), ("composed", composed_steps)):
            run_configuration(shared, scheme, workdir, k, arm, steps, batch_size, lr, 0.0, seed, eval_every)
            c = pd.read_csv(workdir / "runs" / f"c{k}_{arm}.csv")
            extra = ["val_bleu"] if "val_bleu" in c.columns else []
            curves.append(c.assign(config=k, arm=arm)[[*CURVE_COLUMNS, *extra]])
    curves = pd.concat(curves, ignore_index=True)
    per, fam = equal_quality(curves, module, scheme, tol)
    out = workdir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("curves", curves), ("module", module), ("configs", per), ("family", fam)):
        df.to_csv(out / f"{name}.csv", index=False)
    return {"configs": per, "family": fam, "curves": curves, "module": module, "dense_heldout": shared["dense_heldout"]}
