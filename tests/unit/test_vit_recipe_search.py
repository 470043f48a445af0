"""``benchmarks/vit_recipe_search.py`` on small idx files: each recipe is a ``vit train`` run whose
card carries the recipe's settings, and the table ranks the recipes by validation top-1."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark
from test_vit_train import write_idx


def load_search():
    return load_benchmark("vit_recipe_search")


def test_recipes_run_as_vit_train_with_their_settings(tmp_path, capsys):
    search = load_search()
    data = write_idx(tmp_path / "idx", n_train=48, n_test=16)  # 32 training images left: one step per epoch
    rows = search.main(["--only", "M", "E", "--jobs", "2", "--out", str(tmp_path / "runs"), "--data-dir", str(data),
                        "--val-size", "16"])
    assert [r["name"] for r in rows] == ["M", "E"]
    card = json.loads((tmp_path / "runs" / "M" / "model" / "card.json").read_text())
    tr = card["training"]
    assert (tr["epochs"], tr["lr"], tr["warmup"], tr["weight_decay"], tr["augment"]) == (8, 2e-4, 100, 0.1, False)
    assert tr["init_from"] == str(search.P5) and "--weight-decay 0.1" in tr["command"]
    assert rows[0]["val_top1"] == card["val_top1"] and rows[0]["test_top1"] == card["test_top1"]
    printed = capsys.readouterr().out.splitlines()
    ranked = [line.split("|")[1].strip() for line in printed if line.startswith("| M ") or line.startswith("| E ")]
    vals = {r["name"]: r["val_top1"] for r in rows}
    assert ranked == sorted(vals, key=lambda n: -vals[n])
    wide = search.command("W1", tmp_path, "cuda", None)
    assert wide[wide.index("--d-model") + 1] == "128" and wide[wide.index("--device") + 1] == "cuda"
    with pytest.raises(SystemExit, match="unknown recipes"):
        search.main(["--only", "Z"])
