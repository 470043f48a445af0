"""``import causal_nb`` works where plotly and ipywidgets are missing (a headless worker, a GPU box
without Jupyter); the plots and widgets load on first use and are the notebook modules themselves."""

from __future__ import annotations

import subprocess
import sys

import causal_nb as cnb


def test_the_package_imports_and_trains_without_plotly_or_ipywidgets():
    code = ("import sys\n"
            "sys.modules['plotly'] = None; sys.modules['ipywidgets'] = None  # importing them now fails\n"
            "import causal_nb as cnb\n"
            "from causal_nb.zoo.train_vit import train_vit\n"
            "cnb.score, cnb.prune, cnb.load_model\n"
            "try:\n"
            "    cnb.widgets\n"
            "except ImportError:\n"
            "    print('widgets need ipywidgets')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "widgets need ipywidgets" in out.stdout


def test_the_lazy_names_are_the_notebook_modules():
    from causal_nb.notebook import plotting, pruning_plots, widgets

    assert cnb.plotting is plotting and cnb.widgets is widgets
    assert cnb.sparsity_curves is pruning_plots.sparsity_curves
    assert {"plotting", "widgets", "sparsity_curves"} <= set(dir(cnb))
    try:
        cnb.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
