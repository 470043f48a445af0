"""Sweeps on Ray (a local 2-CPU cluster started here) and SLURM through submitit's local executor,
compared with the in-process sweep (the reference: one process, cells in order); worker kills,
raising cells, driver kills and bad executor settings."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from causal_nb.core.executors import ExecutorError, RayExecutor, make_executor, require
from causal_nb.evaluation.sweep import SweepError, sweep

REPO = Path(__file__).resolve().parents[2]


def small(tiny_dirs, out, **kw):
    return {"out": str(out), "models": [str(tiny_dirs["llama"])], "n_prompts": 3, "n_eval_prompts": 2, "n_tokens": 8,
            "methods": ["magnitude", "taylor"], "units": ["head"], "sparsities": [0.25, 0.5], "eval_domains": ["python"],
            **kw}


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="seconds").reset_index(drop=True),
                                  b.drop(columns="seconds").reset_index(drop=True))


@pytest.fixture(scope="module")
def reference(tiny_dirs, tmp_path_factory):
    """The in-process sweep of ``small``: the table every executor must reproduce."""
    return sweep(small(tiny_dirs, tmp_path_factory.mktemp("ref") / "ref"), progress=False)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs for this module, shut down after it.

    Ray's raylet gives its agent processes 30 s to start. On this shared 2-core machine a Python
    process that imports jsonschema spends ~4 s CPU in ``rfc3987_syntax`` (an optional format
    checker jupyter pulls in, unused by Ray and the kit), which under load pushes the agent past
    30 s; the cluster's processes (not this one) therefore get a stub that makes that optional
    import fail, as on a machine without the package.
    """
    ray = pytest.importorskip("ray")
    stub = tmp_path_factory.mktemp("nofmt")
    (stub / "rfc3987_syntax.py").write_text("raise ImportError('optional format checker left out of Ray workers')\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(stub), str(REPO), *([old] if old else [])])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"a local Ray cluster did not start on this machine: {e}")
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


# ---------------------------------------------------------------------------------------- bad input


def test_bad_executor_settings_are_named():
    with pytest.raises(ExecutorError, match="workers must be an integer >= 1, got 0"):
        RayExecutor(workers=0)
    with pytest.raises(ExecutorError, match="num_gpus_per_cell"):
        RayExecutor(num_gpus_per_cell=-1)
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask")


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ExecutorError, match=r"causal_nb\[scale\]"):
        require("ray")
    with pytest.raises(ExecutorError, match=r"causal_nb\[scale\]"):
        list(RayExecutor().run(lambda: None, lambda s, x: x, [1]))


def test_unreachable_address_fails_within_seconds():
    pytest.importorskip("ray")
    t0 = time.time()
    with pytest.raises(ExecutorError, match=r"cannot reach the Ray cluster at 'ray://127\.0\.0\.1:9'"):
        list(RayExecutor(address="ray://127.0.0.1:9", connect_timeout=2).run(lambda: None, lambda s, x: x, [1]))
    with pytest.raises(ExecutorError, match="is not 'auto'"):
        list(RayExecutor(address="nowhere").run(lambda: None, lambda s, x: x, [1]))
    assert time.time() - t0 < 10


def test_cli_refuses_options_of_another_executor(tiny_dirs, tmp_path, capsys):
    from causal_nb.__main__ import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(small(tiny_dirs, tmp_path / "o")))
    assert main(["sweep", str(cfg), "--workers", "2", "--no-progress"]) == 1
    assert "--workers: option(s) of --executor ray" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "--resume", "--executor", "ray", "--workers", "0", "--no-progress"]) == 1
    assert "workers must be an integer >= 1, got 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ failing cells


def failing_config(tiny_dirs, tmp_path):
    """magnitude scores saved, random's missing: the random cells raise, the others work."""
    import causal_nb
    from causal_nb.analyses.scoring import save_scores, score

    model = causal_nb.load_model(tiny_dirs["llama"], device="cpu")
    prompts = causal_nb.load_prompts("python", n=3)
    save_scores(score(model, prompts, "magnitude", unit="head", progress=False), tmp_path / "saved", model, "python",
                prompts)
    return small(tiny_dirs, tmp_path / "f", methods=["magnitude", "random"], scores_dir=str(tmp_path / "saved"))


def check_failed_sweep(cfg, run):
    seen = []
    with pytest.raises(SweepError, match=r"2 of 4 cells failed") as err:
        run(seen)
    assert str(err.value).count("no saved random head scores") == 2
    assert "__random__" in str(err.value) and "__magnitude__" not in str(err.value)
    out = Path(cfg["out"])
    assert sorted(p.name.split("__")[1] for p in (out / "cells").glob("*.json")) == ["magnitude", "magnitude"]
    assert len(pd.read_csv(out / "results.csv")) == 2
    traces = sorted((out / "failures").glob("*.txt"))
    assert len(traces) == 2 and all("Traceback" in t.read_text() and "unit_scores" in t.read_text() for t in traces)
    assert len(seen) == 2 and all("Traceback" in f.traceback for f in seen)


def test_failing_cells_in_process_are_reported_and_the_rest_written(tiny_dirs, tmp_path):
    cfg = failing_config(tiny_dirs, tmp_path)
    check_failed_sweep(cfg, lambda seen: sweep(cfg, progress=False, on_failure=seen.append))


def test_failing_cells_exit_the_cli_non_zero(tiny_dirs, tmp_path, capsys):
    from causal_nb.__main__ import main

    cfg = failing_config(tiny_dirs, tmp_path)
    path = tmp_path / "f.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["sweep", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "2 of 4 cells failed" in err


# --------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_sweep_equals_in_process(tiny_dirs, tmp_path, reference, ray_cluster):
    rows = []
    ex = RayExecutor(workers=2)
    res = sweep(small(tiny_dirs, tmp_path / "r"), executor=ex, progress=False, on_cell=rows.append)
    same(res, reference)
    assert len(rows) == 4 and len(list((tmp_path / "r" / "cells").glob("*.json"))) == 4


@pytest.mark.slow
def test_ray_failing_cells_are_reported(tiny_dirs, tmp_path, ray_cluster):
    cfg = failing_config(tiny_dirs, tmp_path)
    check_failed_sweep(cfg, lambda seen: sweep(cfg, executor="ray", progress=False, on_failure=seen.append))


def busy_ray_workers() -> list[int]:
    """Pids of Ray worker processes running one of the kit's jobs (Ray sets the process title)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::_remote_job"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_worker_killed_mid_cell_reruns_it(tiny_dirs, tmp_path, reference, ray_cluster):
    if not Path("/proc").exists():
        pytest.skip("needs /proc to find the Ray worker processes")
    killed, stop = [], threading.Event()
    scores = tmp_path / "k" / "scores"

    def killer():  # SIGKILL the first worker seen running a cell (after the sweep's scoring phase)
        while not stop.is_set() and not killed:
            if len(list(scores.rglob("*.json"))) < 2:
                time.sleep(0.01)
                continue
            for pid in busy_ray_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    try:
        res = sweep(small(tiny_dirs, tmp_path / "k"), executor=RayExecutor(workers=2), progress=False)
    finally:
        stop.set()
        t.join()
    assert killed, "no worker was seen running a cell"
    same(res, reference)


@pytest.mark.slow
def test_killed_ray_driver_resumes_without_recomputing(tiny_dirs, tmp_path, reference, ray_cluster):
    cfg = small(tiny_dirs, tmp_path / "d", sparsities=[0.25, 0.5, 0.75])  # 6 cells: time to kill after the first
    path = tmp_path / "d.yaml"
    path.write_text(json.dumps(cfg))
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "causal_nb", "sweep", str(path), "--no-progress", "--executor",
                             "ray", "--address", address, "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    cells = tmp_path / "d" / "cells"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(cells.glob("*.json"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    done = len(list(cells.glob("*.json")))
    assert 1 <= done < 6, (done, err.decode()[-2000:])
    again = []
    res = sweep(cfg, resume=True, executor=RayExecutor(workers=2), progress=False, on_cell=again.append)
    assert len(again) == 6 - done and len(res) == 6
    same(res[res.sparsity != 0.75], reference)


# ------------------------------------------------------ a sweep's exact scores split into unit ranges


class Recording:
    """An executor that runs every job here, in order, as a 2-worker cluster would be given them,
    and keeps the items of each ``run`` (to see how the sweep split its work)."""

    workers = 2

    def __init__(self):
        self.runs = []

    def run(self, setup, fn, items):
        items = list(items)
        self.runs.append(items)
        state = setup()
        for i, item in enumerate(items):
            yield i, fn(state, item)


def score_records(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text())["scores"] for p in (out / "scores").rglob("*.json")}


def test_distributed_sweep_splits_exact_scores_into_unit_ranges_and_equals_in_process(tiny_dirs, tmp_path):
    cfg = dict(methods=["ablation", "taylor"], units=["head", "neuron"], sparsities=[0.5])
    ref = sweep(small(tiny_dirs, tmp_path / "one", **cfg), progress=False)
    ex = Recording()
    res = sweep(small(tiny_dirs, tmp_path / "split", **cfg), executor=ex, progress=False)
    same(res, ref)
    # the same score tables, bit for bit, though ablation's were computed in parts and merged
    assert score_records(tmp_path / "split") == score_records(tmp_path / "one")
    phase, cells = ex.runs
    parts = [j for j in phase if "part" in j]
    # ablation's two tables in 2 parts each (the executor's workers), first; taylor's whole, after
    assert [(j["cell"]["method"], j["kind"], j["part"], j["of"]) for j in parts] == [
        ("ablation", "head", 0, 2), ("ablation", "head", 1, 2), ("ablation", "neuron", 0, 2),
        ("ablation", "neuron", 1, 2)]
    assert [j["cell"]["method"] for j in phase[len(parts):]] == ["taylor", "taylor"] and len(cells) == 4


def test_unit_parts_balance_the_cost_of_later_layers():
    from causal_nb.engine.split import unit_parts

    # a unit of layer l costs n_layers - l forwards of a layer; ranges may cut a layer
    assert unit_parts([1024, 1024], 2) == [(0, 768), (768, 2048)]  # 768 x 2 = 1536 = 256 x 2 + 1024 x 1
    assert unit_parts([4, 4], 2) == [(0, 3), (3, 8)]  # costs 6 and 6
    assert unit_parts([4, 4, 4, 4], 2) == [(0, 5), (5, 16)]  # 4 x 4 + 3 = 19 vs 3 x 3 + 4 x 2 + 4 x 1 = 21
    assert unit_parts([2], 4) == [(0, 1), (1, 2)]  # fewer units than parts: no empty ranges
    assert unit_parts([0, 0], 2) == []
    for counts, k in [([9] * 30, 4), ([5, 7, 3], 3), ([2, 2, 2], 5), ([1536] * 30, 2)]:
        ranges = unit_parts(counts, k)
        assert ranges[0][0] == 0 and ranges[-1][1] == sum(counts) and len(ranges) <= k
        assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))  # contiguous, in order
        n = len(counts)
        weight = [n - layer for layer, c in enumerate(counts) for _ in range(c)]
        costs = [sum(weight[a:b]) for a, b in ranges]
        assert max(costs) - min(costs) <= 2 * n or len(ranges) < k, costs  # equal up to a unit or two


def test_a_failed_score_part_leaves_the_table_to_its_cells(tiny_dirs, tmp_path):
    from causal_nb.core.executors import Failure

    class Failing(Recording):
        """Part 1 of every split table fails (reported as a Failure, as the real executors do)."""

        lost = 0

        def run(self, setup, fn, items):
            def guarded(state, item):
                if "part" in item and item["part"] == 1:
                    self.lost += 1
                    return Failure(item, "RuntimeError: worker lost", "")
                return fn(state, item)

            return super().run(setup, guarded, items)

    cfg = dict(methods=["ablation"], sparsities=[0.5])
    ex = Failing()
    res = sweep(small(tiny_dirs, tmp_path / "f", **cfg), executor=ex, progress=False)
    assert ex.lost == 1
    same(res, sweep(small(tiny_dirs, tmp_path / "one", **cfg), progress=False))  # the cell computed it whole


@pytest.mark.slow
def test_ray_sweep_of_exact_scores_equals_in_process(tiny_dirs, tmp_path, ray_cluster):
    cfg = dict(methods=["ablation"], units=["neuron"], sparsities=[0.25, 0.5])
    ref = sweep(small(tiny_dirs, tmp_path / "one", **cfg), progress=False)
    res = sweep(small(tiny_dirs, tmp_path / "ray", **cfg), executor=RayExecutor(workers=2), progress=False)
    same(res, ref)
    assert score_records(tmp_path / "ray") == score_records(tmp_path / "one")


# ------------------------------------------------------------------- exact scoring split into unit ranges


def same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same computation per unit: bit-identical
    assert set(a.attrs) == set(b.attrs), (sorted(a.attrs), sorted(b.attrs))
    for k, v in b.attrs.items():
        if isinstance(v, pd.DataFrame):
            pd.testing.assert_frame_equal(a.attrs[k], v, check_exact=True)
        else:
            assert a.attrs[k] == v, k


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    import causal_nb

    return causal_nb.load_model(tiny_dirs["llama"], device="cpu")


class Width:
    """An in-process executor that says it runs three jobs at once: three unit ranges."""

    workers = 3

    def run(self, setup, fn, items):
        from causal_nb.core.executors import InProcessExecutor

        self.items = list(items)
        return InProcessExecutor().run(setup, fn, self.items)


@pytest.mark.parametrize("method", ["ablation", "patching"])
def test_score_split_over_workers_equals_one_process(llama, method):
    import causal_nb

    prompts = causal_nb.load_prompts("python", n=3)
    kw = {"corrupted": causal_nb.load_prompts("cpp", n=3)} if method == "patching" else {}
    whole = causal_nb.score(llama, prompts, method, unit="neuron", n_tokens=8, seed=3, progress=False, **kw)
    ex = Width()
    split = causal_nb.score(llama, prompts, method, unit="neuron", n_tokens=8, seed=3, progress=False, executor=ex, **kw)
    same_scores(split, whole)
    # three ranges of about equal cost: a layer-0 neuron reruns both layers, a layer-1 neuron one
    n = len(whole)
    assert len(ex.items) == 3 and ex.items[0][0] == 0 and ex.items[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ex.items, ex.items[1:]))
    cost = [sum(2 if i < n // 2 else 1 for i in range(a, b)) for a, b in ex.items]
    assert max(cost) - min(cost) <= 2, (ex.items, cost)
    part = causal_nb.score(llama, prompts, "ablation", unit="head", n_tokens=8, seed=3, progress=False, layers=[1])
    same_scores(causal_nb.score(llama, prompts, "ablation", unit="head", n_tokens=8, seed=3, progress=False,
                                layers=[1], executor=Width()), part)


@pytest.mark.parametrize("method", ["taylor", "magnitude", "random", "attribution", "acdc"])
def test_score_refuses_executor_for_one_pass_methods(llama, method):
    import causal_nb

    prompts = causal_nb.load_prompts("python", n=2)
    why = "walk tests each unit" if method == "acdc" else "every unit in one pass"
    with pytest.raises(ValueError, match=rf"executor= is not used by method '{method}' \(.*{why}.*ablation, patching"):
        causal_nb.score(llama, prompts, method, unit="head", n_tokens=8, executor=Width())


def test_ablate_split_over_workers_equals_one_process(llama):
    import causal_nb
    from causal_nb.core.executors import InProcessExecutor

    prompts = causal_nb.load_prompts("python", n=3)
    whole = causal_nb.ablate(llama, prompts, unit="neuron", kind="mean", n_tokens=8, progress=False)
    same_scores(causal_nb.ablate(llama, prompts, unit="neuron", kind="mean", n_tokens=8, progress=False,
                                 executor=InProcessExecutor()), whole)


@pytest.mark.parametrize("method", ["ablation", "patching"])
def test_unit_range_slices_concatenate_to_the_whole_table(llama, method):
    import causal_nb
    from causal_nb.engine.split import merge_layers

    prompts = causal_nb.load_prompts("python", n=3)
    kw = {"corrupted": causal_nb.load_prompts("cpp", n=3)} if method == "patching" else {}
    whole = causal_nb.score(llama, prompts, method, unit="neuron", n_tokens=8, progress=False, **kw)
    n = len(whole)
    cuts = [0, 5, n // 2 + 3, n]  # the middle range cuts across the layer boundary
    parts = [causal_nb.score(llama, prompts, method, unit="neuron", n_tokens=8, progress=False, unit_range=(a, b), **kw)
             for a, b in zip(cuts, cuts[1:])]
    assert [len(t) for t in parts] == [b - a for a, b in zip(cuts, cuts[1:])]
    assert parts[1].attrs["unit_range"] == (5, n // 2 + 3)
    same_scores(merge_layers(parts, None), whole)
    # ablate's own table too: rows, per-prompt values and baselines
    ab = causal_nb.ablate(llama, prompts, unit="head", kind="zero", n_tokens=8, progress=False)
    halves = [causal_nb.ablate(llama, prompts, unit="head", kind="zero", n_tokens=8, progress=False, unit_range=r)
              for r in [(0, 3), (3, len(ab))]]
    same_scores(merge_layers(halves, None), ab)


def test_unit_range_refuses_what_it_cannot_mean(llama):
    import causal_nb
    from causal_nb.core.executors import InProcessExecutor

    prompts = causal_nb.load_prompts("python", n=2)
    n = len(causal_nb.score(llama, prompts, "magnitude", unit="head"))
    with pytest.raises(ValueError, match=rf"outside the {n} units.*0 <= start < stop <= {n}"):
        causal_nb.score(llama, prompts, "ablation", unit="head", n_tokens=8, unit_range=(2, n + 1))
    with pytest.raises(ValueError, match="outside"):
        causal_nb.ablate(llama, prompts, unit="head", n_tokens=8, unit_range=(3, 3))
    with pytest.raises(ValueError, match="pair"):
        causal_nb.ablate(llama, prompts, unit="head", n_tokens=8, unit_range=5)
    with pytest.raises(ValueError, match="unit_range.*taylor"):
        causal_nb.score(llama, prompts, "taylor", unit="head", n_tokens=8, unit_range=(0, 2))
    with pytest.raises(ValueError, match="unit_range.*attribution"):
        causal_nb.patch(llama, prompts, causal_nb.load_prompts("cpp", n=2), method="attribution", n_tokens=8,
                        unit_range=(0, 2))
    with pytest.raises(ValueError, match="splits the units over workers itself"):
        causal_nb.score(llama, prompts, "ablation", unit="head", n_tokens=8, unit_range=(0, 2),
                        executor=InProcessExecutor())
    part = causal_nb.score(llama, prompts, "ablation", unit="head", n_tokens=8, progress=False, unit_range=(0, 2))
    with pytest.raises(ValueError, match=r"units \(0, 2\) only.*merge the slices"):
        causal_nb.prune(llama, part, 0.5)


def test_split_refuses_what_workers_cannot_reproduce(llama, tiny_dirs):
    import torch

    import causal_nb
    from causal_nb.core.executors import InProcessExecutor
    from causal_nb.engine.split import SplitError

    prompts = causal_nb.load_prompts("python", n=2)
    pruned = causal_nb.prune(llama, causal_nb.score(llama, method="magnitude"), 0.5)
    with pytest.raises(SplitError, match="pruned in memory; save it"):
        causal_nb.score(pruned, prompts, "ablation", n_tokens=8, executor=InProcessExecutor())
    edited = causal_nb.load_model(tiny_dirs["llama"], device="cpu")
    with torch.no_grad():
        edited.blocks[0].attn.W_Q.mul_(2)
    with pytest.raises(SplitError, match="other weights than the driver's"):
        causal_nb.score(edited, prompts, "ablation", n_tokens=8, executor=InProcessExecutor())


@pytest.mark.slow
def test_score_and_ablate_on_ray_equal_one_process(llama, ray_cluster):
    import causal_nb

    prompts = causal_nb.load_prompts("python", n=3)
    whole = causal_nb.score(llama, prompts, "ablation", unit="neuron", n_tokens=8, progress=False)
    same_scores(causal_nb.score(llama, prompts, "ablation", unit="neuron", n_tokens=8, progress=False,
                                executor=RayExecutor(workers=2)), whole)
    whole = causal_nb.ablate(llama, prompts, unit="head", kind="zero", n_tokens=8, progress=False)
    same_scores(causal_nb.ablate(llama, prompts, unit="head", kind="zero", n_tokens=8, progress=False,
                                 executor=RayExecutor(workers=2)), whole)
    with pytest.raises(ExecutorError, match="num_gpus_per_cell=1 but the Ray cluster has 0 GPU"):
        causal_nb.score(llama, prompts, "ablation", n_tokens=8, executor=RayExecutor(num_gpus_per_cell=1))


# -------------------------------------------------------------------------------------- submitit


@pytest.mark.slow
def test_submitit_local_job_array_equals_in_process(tiny_dirs, tmp_path, reference, monkeypatch):
    pytest.importorskip("submitit")
    from causal_nb.core.executors import SubmititExecutor

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    ex = SubmititExecutor(folder=tmp_path / "logs", cluster="local", jobs=2, timeout_min=10, poll_seconds=0.2)
    res = sweep(small(tiny_dirs, tmp_path / "s"), executor=ex, progress=False)
    same(res, reference)
    # two arrays of 2 tasks: the 2 score tables (magnitude, taylor), then the 4 cells
    assert len(list((tmp_path / "logs").glob("*_submitted.pkl"))) == 4
