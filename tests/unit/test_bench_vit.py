"""``benchmarks/bench_vit.py`` (Torch-Pruning against the kit on a ViT) on a tiny random ViT:

- Torch-Pruning's pruned Hugging Face ViT gives the logits of the dense model with the removed
  heads and MLP neurons zeroed by plain forward hooks (the removed units found by matching the
  surviving weight rows against the dense ones), keeps the residual width, and has the
  parameter count written out by hand, which the kit's pruned model at the same budget matches;
- the script runs end to end on small idx files and prints one row per method and budget.
"""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark
from test_vit_train import write_idx

import causal_nb as cnb
from causal_nb.zoo.tiny import make_tiny_vit

pytest.importorskip("torch_pruning")
D, HEADS, D_MLP, N_LAYERS, DH = 32, 4, 64, 2, 8


def load_bench():
    return load_benchmark("bench_vit")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny", n_layers=N_LAYERS, d_model=D, n_heads=HEADS,
                         d_mlp=D_MLP, seed=4)


def kept_rows(dense_w, pruned_w) -> list[int]:
    """The dense rows each pruned row equals (Torch-Pruning keeps rows in order)."""
    return [int(torch.nonzero((dense_w == row).all(-1))[0]) for row in pruned_w]


@pytest.mark.parametrize("importance", ["tp magnitude", "tp taylor"])
def test_tp_pruned_vit_equals_the_dense_one_with_the_units_zeroed(folder, importance):
    from transformers import ViTForImageClassification

    bench = load_bench()
    dense = ViTForImageClassification.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g)
    train = cnb.data.images.ImageSet(x, torch.randint(0, 10, (6,), generator=g), tuple("0123456789"), "train", "",
                                     torch.arange(6))
    pruned = bench.tp_prune(dense, 0.5, importance, train, taylor_batches=1, batch_size=6)
    handles = []
    for d, p in zip(dense.vit.layers, pruned.vit.layers):
        assert p.attention.o_proj.out_features == D and p.mlp.fc2.out_features == D  # the residual stays whole
        q = kept_rows(d.attention.q_proj.weight, p.attention.q_proj.weight)
        heads = sorted({r // DH for r in q})
        assert q == [h * DH + j for h in heads for j in range(DH)] and len(heads) == HEADS // 2, q
        assert p.attention.num_attention_heads == len(heads)
        neurons = kept_rows(d.mlp.fc1.weight, p.mlp.fc1.weight)
        assert len(neurons) == D_MLP // 2
        head_mask = torch.zeros(D)
        for h in heads:
            head_mask[h * DH:(h + 1) * DH] = 1
        neuron_mask = torch.zeros(D_MLP)
        neuron_mask[neurons] = 1
        handles += [d.attention.o_proj.register_forward_pre_hook(lambda m, a, k=head_mask: (a[0] * k,)),
                    d.mlp.fc2.register_forward_pre_hook(lambda m, a, k=neuron_mask: (a[0] * k,))]
    with torch.no_grad():
        want = dense(pixel_values=x).logits
        got = pruned(pixel_values=x).logits
    for h in handles:
        h.remove()
    assert (got - want).abs().max() < 1e-5
    removed_heads, removed_neurons = N_LAYERS * HEADS // 2, N_LAYERS * D_MLP // 2
    expect = bench.n_params(dense) - removed_heads * (4 * D * DH + 3 * DH) - removed_neurons * (2 * D + 1)
    assert bench.n_params(pruned) == expect
    bridge = cnb.load_model(folder, device="cpu")
    task = cnb.ImageClassificationTask(x, train.labels)
    tables = [cnb.score(bridge, task=task, method="magnitude", unit=u) for u in ("head", "neuron")]
    assert bench.n_params(bench.kit_prune(bridge, 0.5, tables, task)) == expect
    per_layer = bench.kit_prune(bridge, 0.5, tables, task, "per_layer")  # TP's allocation: half of each layer
    assert [lay.attention.num_attention_heads for lay in per_layer.vit.layers] == [HEADS // 2] * N_LAYERS
    assert [lay.mlp.fc1.out_features for lay in per_layer.vit.layers] == [D_MLP // 2] * N_LAYERS


def test_the_script_prints_one_row_per_method_and_budget(folder, tmp_path, capsys):
    data = write_idx(tmp_path / "idx", n_train=48, n_test=16)
    res = load_bench().main(["--model", str(folder), "--data-dir", str(data), "--val-size", "16", "--budgets", "0.5",
                             "--n-score-images", "8", "--taylor-batches", "1", "--n-test-images", "16",
                             "--finetune-steps", "1", "--repeats", "1", "--timing-s", "0.01", "--no-progress", "--out",
                             str(tmp_path / "r.json")])
    assert [r["method"] for r in res["rows"]] == ["tp magnitude", "tp taylor", "kit ablation", "kit attribution-abs"]
    printed = capsys.readouterr().out
    one = load_bench().main(["--model", str(folder), "--data-dir", str(data), "--val-size", "16", "--budgets", "0.5",
                             "--methods", "kit ablation", "kit ablation per-layer", "--n-score-images", "8",
                             "--n-test-images", "16", "--finetune-steps", "1", "--repeats", "1", "--timing-s", "0.01",
                             "--no-progress"])
    assert [r["method"] for r in one["rows"]] == ["kit ablation", "kit ablation per-layer"]
    assert "fine-tuning (seed 0)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown methods"):
        load_bench().main(["--model", str(folder), "--methods", "kit ablation per-head"])
    assert len({r["params"] for r in res["rows"]}) == 1 and res["rows"][0]["params"] < res["dense"]["params"]
    main_table, paired = printed.split("Paired on the same")
    assert main_table.count("| 50% |") == 4 and "| dense |" in main_table and (tmp_path / "r.json").exists()
    assert paired.count("| 50% |") == 3  # each row but the best TP one, against that one


def test_paired_vs_matches_a_hand_computed_mcnemar():
    bench = load_bench()
    # 20 images: both right on 12, both wrong on 4, only a right on 3, only b right on 1.
    a = [1] * 12 + [0] * 4 + [1] * 3 + [0]
    b = [1] * 12 + [0] * 4 + [0] * 3 + [1]
    c = bench.paired_vs(a, b)
    assert (c["a_only"], c["b_only"]) == (3, 1)
    assert c["diff"] == pytest.approx(2 / 20)
    # exact two-sided binomial on 4 discordant pairs, 3 of one kind: (1 + 4 + 4 + 1) / 16
    assert c["p_mcnemar"] == pytest.approx(10 / 16)
    assert c["lo"] <= c["diff"] <= c["hi"] and c["lo"] < c["hi"]
    same = bench.paired_vs(a, a)
    assert (same["diff"], same["lo"], same["hi"], same["p_mcnemar"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="equal-length"):
        bench.paired_vs(a, a[:-1])


def test_the_script_without_fine_tuning_pairs_the_kit_against_tp(folder, tmp_path, capsys):
    data = write_idx(tmp_path / "idx", n_train=48, n_test=16)
    res = load_bench().main(["--model", str(folder), "--data-dir", str(data), "--val-size", "16", "--budgets", "0.5",
                             "--methods", "tp magnitude", "kit ablation", "--n-score-images", "8",
                             "--n-test-images", "16", "--finetune-epochs", "0", "--repeats", "1",
                             "--timing-s", "0.01", "--no-progress"])
    printed = capsys.readouterr().out
    kit = res["rows"][1]
    assert kit["top1_after"] is None and res["dense"]["top1_after"] is None
    assert kit["vs_best_tp"]["reference"] == "tp magnitude"
    assert kit["vs_best_tp"]["diff"] == pytest.approx(kit["top1_before"] - res["rows"][0]["top1_before"])
    assert "Paired on the same 16 test images (before fine-tuning)" in printed and "| 50% | kit ablation | tp" in printed
    with pytest.raises(SystemExit, match="finetune-epochs"):
        load_bench().main(["--model", str(folder), "--finetune-epochs", "-1"])
    with pytest.raises(SystemExit, match="--finetune-device gpu0 is not a torch device"):
        load_bench().main(["--model", str(folder), "--finetune-device", "gpu0"])
