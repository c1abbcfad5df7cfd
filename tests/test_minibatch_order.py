"""The training loop's minibatch order: a fresh permutation of the training rows every epoch,
fixed by the seed (a loop that never shuffles, or reuses one order, fails here). The order is
recorded by claim 13's :func:`validation.claim13_coverage.visit_orders`, which spies on the rows
each training step receives."""
from validation.claim13_coverage import visit_orders

EPOCHS = 3


def test_each_epoch_is_a_new_permutation():
    orders = visit_orders(seed=0, epochs=EPOCHS)
    n = len(orders[0])
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert len({tuple(o) for o in orders}) == EPOCHS          # successive epochs differ
    assert orders[0] != list(range(n))                        # and the first is shuffled too


def test_the_seed_fixes_the_order():
    assert visit_orders(seed=3) == visit_orders(seed=3)
    assert visit_orders(seed=3) != visit_orders(seed=4)
