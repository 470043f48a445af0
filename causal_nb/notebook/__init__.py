"""The notebook face: plots, views, widgets, the series runner, its report and the notebook builder (imports everything below).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
