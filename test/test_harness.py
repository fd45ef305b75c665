"""The DDS test harness's own rules: a ROS_DOMAIN_ID claimed by one process is never handed to
another process on the machine, nor twice to the same one."""
import subprocess
import sys

import pytest

from dovit_ros.ros import harness

HOLD = ('from dovit_ros.ros.harness import fresh_domain_id; import sys; '
        'print(fresh_domain_id(), flush=True); sys.stdin.read()')


def test_domain_claimed_elsewhere_is_never_drawn():
    child = subprocess.Popen([sys.executable, '-c', HOLD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    before = len(harness._DOMAIN_CLAIMS)
    try:
        held = int(child.stdout.readline())
        drawn = []
        with pytest.raises(RuntimeError, match='no free ROS_DOMAIN_ID'):
            for _ in range(101):   # every id this process can still claim, then none
                drawn.append(harness.fresh_domain_id())
        assert held not in drawn
        assert len(set(drawn)) == len(drawn)
        assert set(drawn) | {held} <= set(range(100, 200))
    finally:   # give back what this test claimed: later DDS tests in this process need ids
        for f in harness._DOMAIN_CLAIMS[before:]:
            f.close()
        del harness._DOMAIN_CLAIMS[before:]
        child.communicate('')
    assert harness.fresh_domain_id() in range(100, 200)   # released ids can be claimed again
    harness._DOMAIN_CLAIMS.pop().close()
