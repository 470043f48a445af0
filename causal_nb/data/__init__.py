"""Data: prompt sets and tokenised batches (imports core only); the shipped prompt files are in ``prompt_files/``.

Layer order, imports pointing down only (``tests/unit/test_layout.py`` checks it): core <
models, data, zoo < engine < analyses < pruning < evaluation < notebook < the package root.
"""
