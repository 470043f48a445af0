import os
import random

import numpy as np
import plotly.io as pio
import pytest
import torch

import causal_nb as cnb
from causal_nb.core.io import atomic_write_text


def test_setup_makes_draws_repeat():
    def draws():
        return random.random(), np.random.rand(), torch.rand(3).tolist()

    cnb.setup(seed=123)
    a = draws()
    cnb.setup(seed=123)
    assert draws() == a
    cnb.setup(seed=124)
    assert draws() != a


def test_setup_fixes_renderer_and_reports_versions():
    info = cnb.setup(seed=0)
    assert pio.renderers.default == "plotly_mimetype"
    assert info["torch"] == torch.__version__.split("+")[0]
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_progress_switch(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not cnb.progress_enabled() and cnb.progress_enabled(True)
    monkeypatch.delenv("TQDM_DISABLE")
    assert cnb.progress_enabled() and not cnb.progress_enabled(False)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "r.json"
    cnb.save_json({"a": 1}, p)
    assert cnb.load_json(p) == {"a": 1}
    cnb.save_json({"b": [1, 2]}, p)
    assert cnb.load_json(p) == {"b": [1, 2]}
    assert sorted(x.name for x in p.parent.iterdir()) == ["r.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    p = tmp_path / "r.txt"
    atomic_write_text(p, "old")


    with pytest.raises(TypeError):
        atomic_write_text(p, 42)  # not a str: the write fails midway
    assert p.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_load_json_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cnb.load_json(tmp_path / "nope.json")
