"""Evaluation: pruned-model quality, statistics, sweeps, findings, the ACDC sweep, lm-evaluation-harness runs and duplication pruning (imports pruning and below).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
