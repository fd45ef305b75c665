"""Shared test fixtures."""
import faulthandler
import os

import pytest
import torch

# A test still running after this many seconds dumps every thread's stack and ends the run
# (exit code 1): a hang (e.g. in DDS teardown) fails CI at once, with the stacks, instead of
# holding it until its limit. The whole suite takes ~6 minutes on a 2-core machine.
TEST_LIMIT_S = float(os.environ.get('DOVIT_TEST_LIMIT_S', '600'))

# The attention core is pinned for the whole suite, nodes started as subprocesses included:
# 'auto' picks it by a timing (runtime/attention.py), and results must not depend on one.
# test_attention.py exercises 'auto' itself.
os.environ['DOVIT_ATTENTION'] = 'sdpa'


def pytest_configure(config):
    # a copy of the terminal's stderr, taken before output capturing redirects fd 2
    config._dovit_stderr = os.fdopen(os.dup(2), 'w')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # faulthandler prints 'Timeout (h:mm:ss)!' and the stacks (the test's frames among them)
    faulthandler.dump_traceback_later(TEST_LIMIT_S, exit=True, file=item.config._dovit_stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


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
