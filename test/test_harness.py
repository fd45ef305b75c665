"""The DDS test harness's own rules: a ROS_DOMAIN_ID claimed by one process is never handed to
another process on the machine, nor twice to the same one; its link report."""
import subprocess
import sys

import numpy as np
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


def test_link_report_counts_matches_and_kept_messages():
    """A failed node test's message says which link broke: here one participant publishes to
    its own subscription, so both ends report one match, then one kept message."""
    rig = harness.Client(harness.fresh_domain_id(), name='link_report')
    try:
        rig.subscribe(['/loop/image'])
        pub = rig.image_publisher('/loop/image')
        assert rig.wait_matched(pub)
        before = rig.link_report(pub)
        assert '/loop/image: 1 subscription(s) matched' in before
        assert '/loop/image: 1 publisher(s) matched, 0 message(s) kept' in before
        pub.publish(harness.image_msg(np.zeros((4, 6, 3), np.uint8), (3, 0)))
        assert rig.spin_until(lambda: rig.got((3, 0)), 20.0)
        assert '1 message(s) kept' in rig.link_report(pub, ['/loop/image'])
        assert rig.link_report().endswith('/diagnostics arrays received: 0')
    finally:
        rig.close()
        harness._DOMAIN_CLAIMS.pop().close()
