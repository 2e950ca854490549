"""Torch's intra-op thread count, set for a block and restored after.

Tiny tensors and narrow models run faster on one thread: extra threads only add
synchronisation, which on a loaded 2-core machine cost milliseconds per op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
