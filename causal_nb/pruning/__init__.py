"""Pruning: unit selection (by score or by head duplication) and structured pruning of heads, neurons and blocks (imports analyses and below).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
