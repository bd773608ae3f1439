"""One seed per (run seed, item): what makes a result independent of batch, chunk and rank."""


def item_seed(seed: int, item: int) -> int:
    """The seed of ``item`` (a dataset index, a training step) under the run's ``seed``. The
    prime stride keeps (seed, item) pairs apart for every item below 1,000,003."""
    return seed * 1_000_003 + int(item)
