"""Time to equal quality (issue 14, measurement) on hand-made curves with every step, target and
total computed by hand; the target stop of model-level fine-tuning against the same run without
one; the loss-curve and scheme pictures' tables against hand-built ones."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import causal_nb as cnb
from causal_nb.pruning.compose_measure import steps_to_target
from causal_nb.pruning.compose_scheme import ComposeError, make_configurations, make_scheme

MODS = {"attention": ["transformer.h.0.attn", "transformer.h.1.attn"],
        "linear": ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
                   "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]}


def scheme_of(attention, linear):
    return make_scheme(make_configurations("tiny", MODS, attention, linear))


def curve(k, arm, vals: dict, last: int, per_step: float):
    """Steps 0..last, ``per_step`` training seconds each, held-out loss at the steps in ``vals``."""
    return pd.DataFrame({"config": k, "arm": arm, "step": range(last + 1),
                         "train_loss": [np.nan] + [5.0 - 0.1 * s for s in range(1, last + 1)],
                         "val_loss": [vals.get(s, np.nan) for s in range(last + 1)],
                         "seconds": [per_step * s for s in range(last + 1)]})


@pytest.fixture
def hand():
    scheme = scheme_of([0.25, 0.5], [0.5, 0.5])  # 2 + 2 attention variants, 4 shared linear ones: 8
    curves = pd.concat([
        curve(1, "baseline", {0: 4.0, 2: 3.6, 4: 3.5}, 4, 1.0),
        curve(1, "composed", {0: 3.52, 1: 3.45, 2: 3.40}, 2, 1.0),
        curve(2, "baseline", {0: 5.0, 2: 4.0, 4: 3.9}, 4, 0.5),
        curve(2, "composed", {0: 4.2, 1: 3.95, 2: 3.9}, 2, 0.5),
    ], ignore_index=True)
    module = pd.DataFrame([{"key": v["key"], "steps": 10, "seconds": 0.6, "seconds_per_step": 0.04,
                            "setup_seconds": 0.1} for v in scheme["variants"]]
                          + [{"key": "not_in_this_family", "steps": 99, "seconds": 99.0, "seconds_per_step": 1.0,
                              "setup_seconds": 9.0}])
    return scheme, curves, module


def test_steps_to_target_is_the_first_evaluated_step_at_or_below():
    c = curve(1, "baseline", {0: 4.0, 2: 3.6, 4: 3.5}, 4, 0.5)
    assert steps_to_target(c, 3.6) == (2, 1.0)  # at the target counts
    assert steps_to_target(c, 4.0) == (0, 0.0)
    assert steps_to_target(c, 3.49) == (None, None)


def test_equal_quality_by_hand(hand):
    scheme, curves, module = hand
    assert len(scheme["variants"]) == 8
    per, fam = cnb.equal_quality(curves, module, scheme, tol=0.01)
    b = per[per.rule == "baseline"].set_index("config")
    # config 1: target 1.01 x 3.5 = 3.535; composed starts at 3.52 (step 0), baseline reaches 3.5 at step 4
    assert b.loc[1, "target"] == pytest.approx(3.535)
    assert (b.loc[1, "composed_steps"], b.loc[1, "composed_s"]) == (0, 0.0)
    assert (b.loc[1, "baseline_steps"], b.loc[1, "baseline_s"]) == (4, 4.0)
    # config 2: target 1.01 x 3.9 = 3.939; composed 3.95 at step 1 is not enough, 3.9 at step 2 (0.5 s a step)
    assert (b.loc[2, "composed_steps"], b.loc[2, "composed_s"]) == (2, 1.0)
    assert (b.loc[2, "baseline_steps"], b.loc[2, "baseline_s"]) == (4, 2.0)
    assert (b.loc[2, "attention"], b.loc[2, "linear"], b.loc[2, "s_per_step"]) == ("0.5", "0.5", 0.5)
    best = per[per.rule == "best"].set_index("config")
    # config 1 under the stricter rule: 1.01 x min(3.5, 3.40) = 3.434, which the baseline never reaches
    assert best.loc[1, "target"] == pytest.approx(3.434)
    assert best.loc[1, "composed_steps"] == 2 and np.isnan(best.loc[1, "baseline_steps"])
    f = fam.set_index("rule")
    # module level: the 8 variants of the family once (the unused row left out): 8 x 0.6 s; cost 8 x (10 x 0.04 + 0.1)
    assert f.loc["baseline", "variants"] == 8 and f.loc["baseline", "module_steps"] == 80
    assert f.loc["baseline", "module_s"] == pytest.approx(4.8)
    assert f.loc["baseline", "composed_s"] == pytest.approx(4.8 + 0.0 + 1.0)
    assert f.loc["baseline", "baseline_s"] == pytest.approx(4.0 + 2.0)
    assert f.loc["baseline", "composed_cost_s"] == pytest.approx(4.0 + 0 * 1.0 + 2 * 0.5)
    assert f.loc["baseline", "ratio_s"] == pytest.approx(6.0 / 5.8)
    assert f.loc["baseline", "ratio_cost"] == pytest.approx(6.0 / 5.0)
    assert not f.loc["baseline", "baseline_lower_bound"] and not f.loc["baseline", "composed_lower_bound"]
    # best rule: config 1's baseline counts its whole cap (4 steps x 1 s), a lower bound
    assert f.loc["best", "baseline_s"] == pytest.approx(4.0 + 2.0) and f.loc["best", "baseline_lower_bound"]
    assert f.loc["best", "composed_s"] == pytest.approx(4.8 + 2.0 + 1.0) and f.loc["best", "composed_model_steps"] == 4


def test_equal_quality_refuses_what_it_cannot_read(hand):
    scheme, curves, module = hand
    with pytest.raises(ComposeError, match="both arms"):
        cnb.equal_quality(curves[~((curves.config == 2) & (curves.arm == "composed"))], module, scheme)
    with pytest.raises(ComposeError, match="tol"):
        cnb.equal_quality(curves, module, scheme, tol=1.5)
    with pytest.raises(ComposeError, match="finetune_variants"):
        cnb.equal_quality(curves, module.iloc[1:], scheme)
    with pytest.raises(ComposeError, match="scheme the runs were made from"):
        cnb.equal_quality(curves.assign(config=curves.config + 5), module, scheme)


def test_model_finetuning_stops_at_the_target_on_the_unstopped_run(tmp_path):
    from causal_nb.pruning.compose_modules import load_dense
    from causal_nb.pruning.compose_train import finetune_model
    from causal_nb.zoo.tiny import make_tiny_model

    hf, _ = load_dense(str(make_tiny_model(tmp_path / "m", "gpt2", n_layers=1, d_model=16, n_heads=2, d_mlp=32,
                                           seed=3)))
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 200, (16, 10), generator=g)
    held = train[:4]  # windows it trains on: its loss falls, so a later step can be the target
    full = finetune_model(copy.deepcopy(hf), {}, train, steps=6, batch_size=4, lr=3e-2, heldout=held,
                          eval_every=1)
    assert full.val_loss.iloc[1:].min() < full.val_loss.iloc[0]
    hit = int(full.step[full.val_loss <= full.val_loss.iloc[1:].min()].iloc[0])
    stopped = finetune_model(copy.deepcopy(hf), {}, train, steps=6, batch_size=4, lr=3e-2, heldout=held,
                             eval_every=1, target=float(full.val_loss.iloc[hit]))
    assert int(stopped.step.iloc[-1]) == hit
    pd.testing.assert_series_equal(stopped.val_loss, full.val_loss.iloc[:hit + 1], rtol=1e-6)
    at_start = finetune_model(copy.deepcopy(hf), {}, train, steps=6, heldout=held, target=1e9)
    assert list(at_start.step) == [0]  # the starting model already meets it: no step taken
    with pytest.raises(ValueError, match="heldout"):
        finetune_model(hf, {}, train, steps=1, target=1.0)


def test_bleu_rule_by_hand(hand):
    scheme, curves, module = hand
    assert "bleu" not in set(cnb.equal_quality(curves, module, scheme)[0].rule)  # no val_bleu: no BLEU rule
    bleus = {(1, "baseline"): {0: 10.0, 2: 12.0, 4: 14.0}, (1, "composed"): {0: 13.4, 1: 13.6, 2: 15.0},
             (2, "baseline"): {0: 5.0, 2: 9.0, 4: 8.0}, (2, "composed"): {0: 7.0, 1: 8.0, 2: 8.4}}
    curves = curves.assign(val_bleu=[bleus[(c, a)].get(s, np.nan)
                                     for c, a, s in zip(curves.config, curves.arm, curves.step)])
    per, fam = cnb.equal_quality(curves, module, scheme, tol=0.01, bleu_tol=0.5)
    b = per[per.rule == "bleu"].set_index("config")
    assert set(per[per.rule != "bleu"].measure) == {"loss"} and set(b.measure) == {"bleu"}
    # config 1: baseline best 14.0, target 13.5; composed 13.4 at step 0 is short, 13.6 at step 1 reaches it
    assert b.loc[1, "target"] == pytest.approx(13.5) and b.loc[1, "baseline_best"] == 14.0
    assert (b.loc[1, "composed_steps"], b.loc[1, "composed_s"]) == (1, 1.0)
    assert (b.loc[1, "baseline_steps"], b.loc[1, "baseline_s"]) == (4, 4.0)
    assert (b.loc[1, "composed_start"], b.loc[1, "composed_final"], b.loc[1, "composed_best"]) == (13.4, 15.0, 15.0)
    # config 2: the baseline's best (9.0) is at step 2, not its last evaluation (8.0); target 8.5
    assert b.loc[2, "target"] == pytest.approx(8.5) and b.loc[2, "baseline_final"] == 8.0
    assert (b.loc[2, "baseline_steps"], b.loc[2, "baseline_s"]) == (2, 1.0)
    assert np.isnan(b.loc[2, "composed_steps"])  # 7.0, 8.0, 8.4: never at 8.5 within its cap of 2
    f = fam.set_index("rule").loc["bleu"]
    # composed: module level 4.8 s + config 1's 1 s + config 2's whole cap (2 x 0.5 s), a lower bound
    assert f.composed_s == pytest.approx(4.8 + 1.0 + 1.0) and f.composed_lower_bound
    assert f.baseline_s == pytest.approx(4.0 + 1.0) and not f.baseline_lower_bound
    assert f.composed_model_steps == 1 + 2 and f.baseline_steps == 4 + 2
    with pytest.raises(ComposeError, match="bleu_tol"):
        cnb.equal_quality(curves, module, scheme, bleu_tol=-1)


def test_model_finetuning_records_metrics_at_its_evaluations_only(tmp_path):
    from causal_nb.pruning.compose_modules import load_dense
    from causal_nb.pruning.compose_train import finetune_model
    from causal_nb.zoo.tiny import make_tiny_model

    hf, _ = load_dense(str(make_tiny_model(tmp_path / "m", "gpt2", n_layers=1, d_model=16, n_heads=2, d_mlp=32,
                                           seed=3)))
    train = torch.randint(0, 200, (16, 10), generator=torch.Generator().manual_seed(0))
    seen = []

    def norm(m):  # a metric of the model as it is at that step, seen in eval mode without gradients
        seen.append((m.training, torch.is_grad_enabled()))
        return {"wte_norm": float(m.transformer.wte.weight.detach().norm())}

    plain = finetune_model(copy.deepcopy(hf), {}, train, steps=5, batch_size=4, lr=3e-2, heldout=train[:4],
                           eval_every=2)
    with_m = finetune_model(copy.deepcopy(hf), {}, train, steps=5, batch_size=4, lr=3e-2, heldout=train[:4],
                            eval_every=2, metrics=lambda m: {"wte_norm": norm(m)["wte_norm"]})
    assert list(with_m.step[with_m.wte_norm.notna()]) == [0, 2, 4, 5] and seen == [(False, False)] * 4
    assert with_m.wte_norm.iloc[0] == pytest.approx(float(hf.transformer.wte.weight.detach().norm()))
    pd.testing.assert_series_equal(with_m.val_loss, plain.val_loss)  # the metric does not disturb training
    seen.clear()
    sparse = finetune_model(copy.deepcopy(hf), {}, train, steps=5, batch_size=4, lr=3e-2, heldout=train[:4],
                            eval_every=2, metrics=lambda m: {"wte_norm": norm(m)["wte_norm"]}, metrics_every=4)
    assert list(sparse.step[sparse.wte_norm.notna()]) == [0, 4, 5] and len(seen) == 3  # and the last step
    pd.testing.assert_series_equal(sparse.wte_norm.dropna().reset_index(drop=True),
                                   with_m.wte_norm[with_m.step.isin([0, 4, 5])].reset_index(drop=True))
    with pytest.raises(ValueError, match="multiple of eval_every"):
        finetune_model(copy.deepcopy(hf), {}, train, steps=1, heldout=train[:4], eval_every=2, metrics=norm,
                       metrics_every=3)
    with pytest.raises(ValueError, match="rename"):
        finetune_model(copy.deepcopy(hf), {}, train, steps=1, heldout=train[:4], metrics=lambda m: {"val_loss": 0.0})
    with pytest.raises(TypeError, match="callable"):
        finetune_model(copy.deepcopy(hf), {}, train, steps=1, heldout=train[:4], metrics={"a": 1})


def test_loss_curves_table_by_hand():
    c = pd.concat([curve(1, "baseline", {0: 4.0, 2: 3.6}, 2, 1.0), curve(1, "composed", {0: 3.5, 2: 3.4}, 2, 1.0)])
    fig, df = cnb.plotting.compose_loss_curves(c, smooth=2)
    tr = df[(df.arm == "baseline") & (df.kind == "train")]
    assert list(tr.step) == [1, 2] and list(tr.loss) == pytest.approx([4.9, (4.9 + 4.8) / 2])
    va = df[(df.arm == "composed") & (df.kind == "validation")]
    assert list(va.step) == [0, 2] and list(va.loss) == [3.5, 3.4]
    assert len(df) == 8 and len(fig.data) == 4  # 2 arms x (train, validation)
    targets = pd.DataFrame({"config": [1], "target": [3.535]})
    fig, _ = cnb.plotting.compose_loss_curves(c, targets=targets, x="seconds")
    assert [s.y0 for s in fig.layout.shapes] == [3.535]
    with pytest.raises(ValueError, match="compose_compare"):
        cnb.plotting.compose_loss_curves(c.drop(columns="seconds"))


def test_scheme_matrix_matches_the_scheme_counted_by_hand():
    scheme = scheme_of([0.25, 0.5, 0.25, 0.5], [0.3, 0.3, 0.5, 0.5])
    fig, df = cnb.plotting.compose_scheme_matrix(scheme)
    # 2 attention modules x 2 rates + 4 linears x 2 rates = 12 variants; each configuration uses
    # its 2 attention and 4 linear variants; each variant is shared by the 2 configurations with its rate
    assert df.shape == (4, 12) and list(df.index) == [1, 2, 3, 4]
    assert list(df.sum(axis=1)) == [6, 6, 6, 6] and list(df.sum(axis=0)) == [2] * 12
    att = "transformer.h.0.attn__l1__0.2500"
    lin = "transformer.h.1.mlp.c_fc__l1__0.5000"
    assert list(df[att]) == [1, 0, 1, 0] and list(df[lin]) == [0, 0, 1, 1]
    assert np.nanmax(fig.data[0].z) == 2
    with pytest.raises(ValueError, match="scheme"):
        cnb.plotting.compose_scheme_matrix({"configurations": []})
