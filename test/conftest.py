"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op torch thread for a module: the 2-core CI box is shared, and 2 threads on
    these small forwards oversubscribe it (~5x slower) and make results thread-count dependent.
    Modules opt in with `pytestmark = pytest.mark.usefixtures('one_thread')`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
