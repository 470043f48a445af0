"""lm-evaluation-harness on models pruned by saved duplication logs, against a control.

Reads the ``pruning_log.json`` of ``duplication_prune`` output folders (e.g. those
``duplication_table.py`` writes), prunes the model (masked) as each log says at one sparsity,
runs the harness on the full and every pruned model, and prints each metric with its item
bootstrap interval (``cnb.harness_ci``) and the paired test of every pruning against the
control folder's (``cnb.harness_paired_test``; Holm over the table).

    python benchmarks/duplication_harness.py --model smollm2-135m --sparsity 0.5 \\
        --runs /tmp/dup/euclidean_balanced /tmp/dup/cosine_balanced --control /tmp/dup/random_balanced \\
        --tasks cnb_tatoeba_ending --limit 100
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import causal_nb as cnb
from causal_nb.evaluation.stats import holm


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--runs", nargs="+", required=True, help="duplication_prune output folders")
    p.add_argument("--control", required=True, help="the control's output folder (metric random)")
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    t0 = time.time()
    model = cnb.load_model(a.model, device="cpu")
    items = {"full": pd.DataFrame(cnb.lm_eval(model, a.tasks, limit=a.limit, progress=False).attrs["items"])}
    for folder in [*a.runs, a.control]:
        log = json.loads((Path(folder) / "pruning_log.json").read_text())
        key = next((k for k in log["sparsities"] if np.isclose(float(k), a.sparsity)), None)
        if key is None:
            raise SystemExit(f"{folder}: sparsity {a.sparsity} not logged (has {sorted(log['sparsities'])})")
        heads = {int(k): v for k, v in log["sparsities"][key]["removed"].items()}
        pruned = cnb.prune_units(model, heads=heads, physical=False)
        items[Path(folder).name] = pd.DataFrame(cnb.lm_eval(pruned, a.tasks, limit=a.limit, progress=False).attrs["items"])
        print(f"{Path(folder).name}: {time.time() - t0:.0f} s", flush=True)
    ci = pd.concat([cnb.harness_ci(v).assign(model=k) for k, v in items.items()], ignore_index=True)
    control = items[Path(a.control).name]
    vs = pd.concat([cnb.harness_paired_test(items[k], control).assign(model=k)
                    for k in ["full", *[Path(f).name for f in a.runs]]], ignore_index=True)
    vs["p_holm"] = holm(vs.p.to_numpy())
    print(f"{a.model}, sparsity {a.sparsity}, {a.tasks} limit {a.limit}: {time.time() - t0:.0f} s")
    print(ci[["model", "task", "metric", "value", "ci_low", "ci_high", "n"]].to_markdown(index=False, floatfmt=".4g"))
    print(vs[["model", "task", "metric", "value", "control", "diff", "ci_low", "ci_high", "test", "p_holm"]]
          .to_markdown(index=False, floatfmt=".4g"))
    return {"ci": ci, "vs_control": vs}


if __name__ == "__main__":
    main()
