"""Foundation: environment set-up, JSON/file I/O, argument checks and the version (imports no other layer).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
