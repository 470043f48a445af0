"""Engine: units, tasks, metrics, the replay engine, patching, ablation and attribution (imports core, models, data).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
