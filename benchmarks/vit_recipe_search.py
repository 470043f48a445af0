"""Which training recipe takes the former bundled ViT's shape (d_model 64) past 0.90 test top-1? A
grid of ``python -m causal_nb vit train`` runs, in parallel, one table.

    git archive 49c36b0 causal_nb/zoo/models/vit-fashion-mnist | tar -x -C /tmp/p5   # the d_model-64 phase-5 weights
    python benchmarks/vit_recipe_search.py --device cuda --jobs 8 \
        --p5 /tmp/p5/causal_nb/zoo/models/vit-fashion-mnist                         # the recorded search (GPU)
    python benchmarks/vit_recipe_search.py --only W1 W2 --jobs 2                     # two wide recipes on 2 CPU cores

Each recipe is a run of the kit's own trainer (``zoo.train_vit.train_vit``: the same seeded data
order and augmentation on any device) with the settings below. ``P5`` recipes continue from the
shipped weights (phase 5) with a fresh warm-up and cosine schedule, as the card's later phases
did; ``scratch`` recipes train the same shape from random init. Those phase-5 weights were the
bundled model until the wider one (d_model 128, the ``W`` shape) replaced it: ``--p5`` names a
folder holding them (the ``git archive`` line above restores them from the repository's history). Model selection reads the
validation split; the test top-1 is the card's, read once at the end of each run. A recipe is
ranked by validation, never by test: the table says both so a reader can see the gap.

Measured 2026-12-04 on an NVIDIA H200 (``--device cuda --jobs 8``, two batches of 8; each recipe
1-5 min): no recipe reaches 0.90 test top-1 at this shape (d_model 64, 4 layers); the best test
is 0.8990 (J), the best validation 0.907 (L, test 0.8985). Augmentation (shifts and flips) costs
this small model 0.3-0.9 points: it cannot fit the augmented set (train loss 0.28-0.33 against
0.14-0.18 without). benchmarks/RESULTS.md has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from causal_nb.zoo.vit_card import SHAPE_FLAGS  # the flag of each shape key

#: The shape the A-P recipes were run at: the bundled model's until the d_model-128 model replaced it.
NARROW = {"d_model": 64, "n_heads": 4, "d_mlp": 256}
#: name: (start, augment, peak lr, warm-up steps, epochs, weight decay[, shape other than the bundled one])
_RECIPES = {
    "A": ("P5", True, 4e-4, 100, 20, 0.05), "B": ("P5", True, 2e-4, 100, 20, 0.05),
    "C": ("P5", True, 8e-4, 100, 20, 0.05), "D": ("P5", True, 4e-4, 100, 30, 0.05),
    "E": ("P5", False, 2e-4, 100, 8, 0.05), "F": ("P5", True, 4e-4, 100, 10, 0.05),
    "G": ("scratch", True, 2e-3, 300, 40, 0.05), "H": ("scratch", True, 1e-3, 300, 40, 0.05),
    "I": ("P5", False, 1e-4, 50, 10, 0.05), "J": ("P5", False, 2e-4, 100, 16, 0.05),
    "K": ("P5", False, 4e-4, 100, 16, 0.05), "L": ("P5", False, 1e-3, 100, 20, 0.05),
    "M": ("P5", False, 2e-4, 100, 8, 0.1), "N": ("P5", False, 3e-4, 100, 25, 0.05),
    "O": ("scratch", False, 1e-3, 300, 25, 0.05), "P": ("scratch", False, 2e-3, 300, 25, 0.05),
}
RECIPES = {name: (*r, NARROW) for name, r in _RECIPES.items()}
RECIPES.update({  # wider shapes, from scratch (W1, W2: the bundled shape now)
    "W1": ("scratch", False, 1e-3, 300, 30, 0.05, {"d_model": 128, "n_heads": 4, "d_mlp": 512}),
    "W2": ("scratch", True, 1e-3, 300, 40, 0.05, {"d_model": 128, "n_heads": 4, "d_mlp": 512}),
    "W3": ("scratch", False, 1e-3, 300, 30, 0.05, {"d_model": 96, "n_heads": 6, "d_mlp": 384}),
    "W4": ("scratch", True, 1e-3, 300, 40, 0.05, {"d_model": 96, "n_heads": 6, "d_mlp": 384}),
})



def command(name: str, out: Path, device: str, data_dir: str | None, val_size: int = 5000,
            p5: str | None = None) -> list[str]:
    """The ``vit train`` command line of a recipe (``p5``: the phase-5 folder the ``P5`` recipes start from)."""
    start, augment, lr, warmup, epochs, wd, *shape = RECIPES[name]
    cmd = [sys.executable, "-m", "causal_nb", "vit", "train", "--epochs", str(epochs), "--lr", str(lr),
           "--warmup", str(warmup), "--weight-decay", str(wd), "--out", str(out / name), "--device", device,
           "--val-size", str(val_size), "--no-progress"]
    if start == "P5":
        if p5 is None:
            raise SystemExit(f"recipe {name} continues the former d_model-64 phase-5 weights: pass --p5 DIR (restore "
                             "them with `git archive 49c36b0 causal_nb/zoo/models/vit-fashion-mnist | tar -x -C "
                             "DIR`), or run the scratch recipes (G H O P W1-W4)")
        cmd += ["--init-from", str(p5)]
    if not augment:
        cmd.append("--no-augment")
    for k, v in (shape[0] if shape else {}).items():
        cmd += [SHAPE_FLAGS[k], str(v)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


def run_one(name: str, out: Path, device: str, data_dir: str | None, val_size: int, p5: str | None = None) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per job: --jobs of them side by side
    proc = subprocess.run(command(name, out, device, data_dir, val_size, p5), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"recipe {name} failed:\n{proc.stderr[-2000:]}")
    card = json.loads((out / name / "model" / "card.json").read_text())
    return {"name": name, "settings": RECIPES[name], "val_top1": card["val_top1"], "test_top1": card["test_top1"],
            "train_loss": card["history"][-1]["train_loss"], "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| recipe | start | shape | augment | lr | warm-up | epochs | weight decay | final train loss | "
             "val top-1 | test top-1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["val_top1"]):
        start, aug, lr, warm, ep, wd, *shape = r["settings"]
        shown = " ".join(f"{k}={v}" for k, v in shape[0].items()) if shape else "bundled"
        lines.append(f"| {r['name']} | {start} | {shown} | {'yes' if aug else 'no'} | {lr:g} | {warm} | {ep} | {wd} | "
                     f"{r['train_loss']:.4f} | {r['val_top1']:.4f} | {r['test_top1']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=list(RECIPES), help=f"recipes to run (of {' '.join(RECIPES)})")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--jobs", type=int, default=1, help="recipes trained side by side")
    ap.add_argument("--out", default="runs/vit-recipes", help="run folders, one per recipe")
    ap.add_argument("--data-dir", default=None, help="folder of the idx files")
    ap.add_argument("--val-size", type=int, default=5000, help="training images held out (the shipped model's 5000)")
    ap.add_argument("--p5", default=None, help="folder of the d_model-64 phase-5 weights the P5 recipes continue")
    a = ap.parse_args(argv)
    bad = [n for n in a.only if n not in RECIPES]
    if bad or a.jobs < 1:
        raise SystemExit(f"unknown recipes {bad} (known: {' '.join(RECIPES)}) or --jobs {a.jobs} < 1")
    out = Path(a.out)
    for n in a.only:  # refuse a missing --p5 before any recipe runs
        command(n, out, a.device, a.data_dir, a.val_size, a.p5)
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda n: run_one(n, out, a.device, a.data_dir, a.val_size, a.p5), a.only))
    print(table(rows))
    (out / "search.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
