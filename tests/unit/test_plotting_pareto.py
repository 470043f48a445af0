"""The pruning sweep's Pareto front (quality vs cost) on a hand-built table."""

import pandas as pd

from causal_nb.notebook.plotting import pareto_front

ROWS = [  # model, method, unit, sparsity, params, quality
    ("m", "ablation", "neuron", 0.25, 100, 0.80),
    ("m", "attribution-abs", "neuron", 0.25, 100, 0.80),  # ties with ablation on both axes
    ("m", "magnitude", "neuron", 0.25, 100, 0.50),
    ("m", "ablation", "neuron", 0.5, 60, 0.70),
    ("m", "random", "neuron", 0.5, 60, 0.75),
    ("m", "ablation", "neuron", 0.8, 20, 0.30),
    ("m", "random", "neuron", 0.1, 150, 0.79),  # dearer and worse than the 0.25 pair
]


def table(rows):
    return pd.DataFrame(rows, columns=["model", "method", "unit", "sparsity", "params", "top1"])


def test_front_by_hand_and_independent_of_row_order():
    _, df = pareto_front(table(ROWS), "top1", "params")
    front = df[df.pareto][["method", "sparsity"]].apply(tuple, axis=1).tolist()
    # cheapest first; of the tie at params 100 the first by name is on the front
    assert front == [("ablation", 0.8), ("random", 0.5), ("ablation", 0.25)]
    for order in (ROWS[::-1], ROWS[3:] + ROWS[:3], [ROWS[1], ROWS[0]] + ROWS[2:]):
        _, again = pareto_front(table(order), "top1", "params")
        pd.testing.assert_frame_equal(again, df)
