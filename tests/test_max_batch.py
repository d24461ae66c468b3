"""benchmarks/max_batch.py: the search for the largest batch within a memory budget."""

import argparse
import functools

import pytest

from benchmarks import max_batch
from camjax import experiment


def brute_force(need, budget, multiple, limit=1_000_000):
    fitting = [b for b in range(multiple, limit, multiple) if need(b) <= budget]
    return max(fitting, default=0)


@pytest.mark.parametrize(
    "need, budget, multiple, start",
    [
        (lambda b: 100 + 10 * b, 1_000, 8, 32),  # fits at start: grows
        (lambda b: 100 + 10 * b, 1_000, 8, 128),  # start too large: shrinks
        (lambda b: 10 * b, 10**6, 8, 8),  # far above start: jumps, at most 8x a time
        (lambda b: 1_000 + b * b, 10**6, 8, 64),  # not linear: bisection finishes
        (lambda b: 1_000 + b * b + (b % 24 == 0) * 500, 10**6, 8, 64),  # bumpy
        (lambda b: 5_000 + 3 * b, 10_000, 1, 1),
    ],
)
def test_largest_fitting_equals_brute_force(need, budget, multiple, start):
    best, needs = max_batch.largest_fitting(need, budget, multiple, start)
    assert best == brute_force(need, budget, multiple)
    assert all(needs[b] == need(b) for b in needs)
    assert best % multiple == 0 and best in needs and best + multiple in needs
    assert len(needs) <= 12


@pytest.mark.parametrize("budget", [500_000, 60_000])  # answers above / below 2 * start
def test_linear_need_takes_four_compiles(budget):
    # Answers within 8x of the second batch tried: no capped jump on the way.
    best, needs = max_batch.largest_fitting(lambda b: 7_000 + 300 * b, budget, 8, 128)
    assert best == brute_force(lambda b: 7_000 + 300 * b, budget, 8)
    assert len(needs) == 4


def test_a_need_that_does_not_grow_stops_the_search():
    with pytest.raises(ValueError, match="does not grow"):
        max_batch.largest_fitting(lambda b: 100, 1_000, 8, 128)


def test_nothing_fits():
    best, needs = max_batch.largest_fitting(lambda b: 10 * b, 50, 8, 64)
    assert best == 0 and needs[8] > 50


@pytest.mark.slow  # compiles the train step at 5-7 batch sizes: ~40 s on 2 cores
def test_compiled_train_step_need_grows_with_the_batch_and_bounds_the_search():
    # A real compiled training step (tiny VGG16-GAP, 8 CPU devices): XLA's accounting grows
    # with the batch, and the search's answer is the last batch under the budget.
    args = argparse.Namespace(size=32, width=1 / 16, dtype="float32")
    mesh = experiment.make_mesh()
    step, state, sums = max_batch.step_for(max_batch.model_config("vgg16_gap", args), mesh)

    @functools.cache  # each compile takes seconds
    def need(batch):
        lowered = step.lower(state, sums, max_batch.abstract_batch(batch, args.size, mesh))
        return max_batch.compiled_bytes(lowered.compile())

    small, large = need(16), need(64)
    assert large > small > 0
    budget = (small + large) // 2
    best, needs = max_batch.largest_fitting(need, budget, 8, 16)
    assert 16 <= best < 64
    assert needs[best] <= budget < needs[best + 8]
