"""Analyses: causal scoring, ACDC, duplication, reverse intervention, induction and IOI circuits (imports engine and below).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
