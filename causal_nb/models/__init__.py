"""Models: loading bridges, supported families, the plain Hugging Face copy of a bridge and its slicing (imports core, data, zoo).

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
