"""``benchmarks/vit_recipe_search.py`` on small idx files: each recipe is a ``vit train`` run whose
card carries the recipe's settings, and the table ranks the recipes by validation top-1."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark
from test_vit_train import write_idx

from causal_nb.zoo.tiny import make_tiny_vit


def load_search():
    return load_benchmark("vit_recipe_search")


def test_recipes_run_as_vit_train_with_their_settings(tmp_path, capsys):
    search = load_search()
    data = write_idx(tmp_path / "idx", n_train=48, n_test=16)  # 32 training images left: one step per epoch
    args = ["--only", "M", "E", "--jobs", "2", "--out", str(tmp_path / "runs"), "--data-dir", str(data), "--val-size", "16"]
    with pytest.raises(SystemExit, match="pass --p5 DIR"):  # the P5 recipes continue weights no longer bundled
        search.main(args)
    assert not (tmp_path / "runs").exists()
    # a stand-in for the d_model-64 phase-5 folder: the recipes' narrow shape, random weights
    p5 = make_tiny_vit(tmp_path / "p5", n_layers=4, patch_size=4, **search.NARROW)
    rows = search.main([*args, "--p5", str(p5)])
    assert [r["name"] for r in rows] == ["M", "E"]
    card = json.loads((tmp_path / "runs" / "M" / "model" / "card.json").read_text())
    tr = card["training"]
    assert (tr["epochs"], tr["lr"], tr["warmup"], tr["weight_decay"], tr["augment"]) == (8, 2e-4, 100, 0.1, False)
    assert tr["init_from"] == str(p5) and "--weight-decay 0.1" in tr["command"]
    assert card["shape"]["d_model"] == 64 and "--d-model 64" in tr["command"]
    assert rows[0]["val_top1"] == card["val_top1"] and rows[0]["test_top1"] == card["test_top1"]
    printed = capsys.readouterr().out.splitlines()
    ranked = [line.split("|")[1].strip() for line in printed if line.startswith("| M ") or line.startswith("| E ")]
    vals = {r["name"]: r["val_top1"] for r in rows}
    assert ranked == sorted(vals, key=lambda n: -vals[n])
    wide = search.command("W1", tmp_path, "cuda", None)
    assert wide[wide.index("--d-model") + 1] == "128" and wide[wide.index("--device") + 1] == "cuda"
    with pytest.raises(SystemExit, match="unknown recipes"):
        search.main(["--only", "Z"])
