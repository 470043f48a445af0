"""The kit installed from its wheel (not the source tree): prompt sets, bundled models and the
notebook series ship as package data, and the runner finds them outside the repository."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = r"""
import json, sys
from pathlib import Path
import causal_nb
from causal_nb.notebook.runner import RunError, default_notebooks_dir, run_series, series

target = Path(sys.argv[1]).resolve()
assert Path(causal_nb.__file__).resolve().is_relative_to(target), causal_nb.__file__
out = {"python": len(causal_nb.load_prompts("python", split="all")), "domains": causal_nb.available_domains(),
       "models": sorted(causal_nb.list_models()), "series": [p.name for p in series()],
       "notebooks_dir": str(default_notebooks_dir()),
       "pairs": len(causal_nb.load_sentence_pairs("tatoeba-paraphrase", "test"))}
model = causal_nb.load_model("code-gpt2-2l", device="cpu")
out["loss"] = causal_nb.evaluate(model, causal_nb.load_prompts("python", n=2), n_tokens=16, latency_batches=())["loss"]
try:  # reads the packaged notebooks' parameters cells (refused before any kernel starts)
    run_series("demo", {"MODLE": "code-gpt2-2l"}, "run")
except RunError as e:
    out["typo"] = str(e)
from causal_nb.__main__ import main  # the command line lists and copies the packaged series

out["copy"] = [main(["notebooks", "--copy", "mine"]), main(["notebooks", "--copy", "mine"])]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed (not editable) into a bare folder."""
    tmp = tmp_path_factory.mktemp("pkg")
    # built from a clean copy: an in-tree build/ left by an earlier build could add stale files
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", ".*_cache", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "wheel")], check=True, cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("causal_nb-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True, cwd=tmp)
    return tmp, wheel


def run_outside(tmp, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("CAUSAL_NB_PROMPTS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp / "site"), TQDM_DISABLE="1")
    work = tmp / "work"
    work.mkdir(exist_ok=True)  # outside the repository: nothing there to fall back on
    return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_data(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "causal_nb").rglob("*.py")}
    assert modules - names == set(), "pyproject.toml [tool.setuptools] packages misses these"
    for domain in ("python", "cpp", "finance", "medical", "science", "maths"):
        assert f"causal_nb/data/prompt_files/{domain}.jsonl" in names
    assert {f"causal_nb/series/{p.name}" for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")} <= names
    assert "causal_nb/zoo/models/code-llama-4l/model.safetensors" in names
    for f in ("next_line_python.yaml", "next_line_python.jsonl", "heldout_cpp.yaml", "tatoeba_ending.jsonl", "PROVENANCE.json"):
        assert f"causal_nb/data/lm_eval_tasks/{f}" in names, f
    for f in ("tatoeba_paraphrase_train.jsonl", "tatoeba_paraphrase_test.jsonl", "tatoeba_questions_train.jsonl",
              "tatoeba_questions_test.jsonl", "build_info.json", "PROVENANCE.md"):
        assert f"causal_nb/data/sentence_files/{f}" in names, f
    for f in ("tatoeba_en_de_train.jsonl.gz", "tatoeba_en_de_val.jsonl.gz", "tatoeba_en_de_test.jsonl.gz",
              "build_info.json", "PROVENANCE.md"):
        assert f"causal_nb/data/translation_files/{f}" in names, f
    assert not any("/src/" in n or n.endswith(".py") and "series/" in n for n in names)


@pytest.mark.slow
def test_installed_package_loads_prompts_models_and_finds_the_notebooks(installed):
    tmp, _ = installed
    r = run_outside(tmp, "-c", CHECK, str(tmp / "site"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["python"] == 240 and {"python", "cpp", "finance"} <= set(out["domains"])
    assert {"code-llama-4l", "code-gpt2-2l"} <= set(out["models"])
    assert out["series"] == sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert Path(out["notebooks_dir"]).is_relative_to(tmp / "site")
    assert 0 < out["loss"] < 20
    assert out["pairs"] == 1000  # the shipped sentence sets load from the installed package
    assert "MODLE (did you mean" in out["typo"] and "'MODEL'" in out["typo"].split("did you mean")[1]
    assert sorted(p.name for p in (tmp / "work" / "mine").glob("*.ipynb")) == out["series"]
    assert out["copy"] == [0, 1] and "already holds" in r.stderr  # a second copy overwrites nothing
