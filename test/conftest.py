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


def pytest_collection_modifyitems(config, items):
    """`cuda`-marked tests (test_cuda.py, run by scripts/device_check.py on a lent GPU) are
    skipped, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs CUDA (not available here)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
