"""Run the quantum tests with one torch thread.

The statevector tensors here are tiny (16 amplitudes x batch), so intra-op threading only adds
synchronization; on a 2-core machine shared with other jobs it made training ~10x slower.
"""

from collections.abc import Iterator

import pytest

from sandbox_quantum import torch_threads


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
