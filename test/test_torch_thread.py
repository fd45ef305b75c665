"""runtime/torch_thread.py: every job in one thread, in order, exceptions to the caller."""
import threading

import pytest

from dovit_ros.runtime.torch_thread import TorchThread


def test_jobs_run_in_one_thread_in_order():
    tt = TorchThread('t')
    seen = []
    futs = [tt.submit(lambda i=i: seen.append((i, threading.get_ident()))) for i in range(20)]
    for f in futs:
        f.result(5)
    assert [i for i, _ in seen] == list(range(20))
    assert {ident for _, ident in seen} == {tt.ident} != {threading.get_ident()}
    assert tt.close(5)


def test_exception_reaches_the_caller_and_the_thread_goes_on():
    tt = TorchThread()
    with pytest.raises(ValueError, match='bad'):
        tt.call(lambda: (_ for _ in ()).throw(ValueError('bad')))
    assert tt.call(lambda a, b: a + b, 2, 3) == 5
    assert tt.close(5)


def test_close_waits_for_the_running_job():
    tt = TorchThread()
    go = threading.Event()
    fut = tt.submit(go.wait, 5)
    assert not tt.close(0.05)   # still inside the job
    go.set()
    assert fut.result(5) is True
    assert tt.close(5)
