"""The demo's player policy (dovit_ros/ros/demo.py) without DDS: when the player's frames reach
the demo but no output comes back from the node, the link is dead and the player is replaced;
the whole demo over DDS runs in test_device_check.py's quick run."""
import threading
import time

import pytest

from dovit_ros.ros.demo import PLAYER_RESTARTS, Demo


def bare_demo() -> Demo:
    d = Demo.__new__(Demo)   # no node, no client: only the policy's state
    d.first_played, d.last_output = None, 0.0
    return d


def test_no_stall_before_the_player_publishes_or_while_outputs_follow():
    d = bare_demo()
    assert not d.stalled(0.0)                 # nothing played yet: discovery may be slow
    d.first_played = time.monotonic() - 10.0
    assert d.stalled(5.0)                     # frames out for 10 s, nothing back
    d.last_output = time.monotonic() - 1.0
    assert not d.stalled(5.0)                 # an output a second ago
    assert d.stalled(0.5)


@pytest.mark.parametrize('outcomes, result, restarts', [
    (['done'], True, 0),
    (['stalled', 'done'], True, 1),
    (['stalled', 'failed'], False, 1),
    (['stalled'] * (PLAYER_RESTARTS + 1), True, PLAYER_RESTARTS),   # the pass goes on short
])
def test_a_stalled_player_is_replaced_a_bounded_number_of_times(outcomes, result, restarts,
                                                                capsys):
    d, calls = bare_demo(), iter(outcomes)
    d.play_once = lambda rate, per_frame_s: next(calls)
    assert d.play(1.0, 0.1) is result
    assert next(calls, None) is None          # every outcome used, no player more
    out = capsys.readouterr().out
    assert out.count('starting a new player') == restarts
    assert ('giving up on this pass' in out) == (outcomes.count('stalled') > PLAYER_RESTARTS)


class StuckClient:
    """A client whose participant deletion never returns on its own (Fast DDS 3.2.3's TCP
    teardown deadlock), until the test lets it go."""

    def __init__(self):
        self.release = threading.Event()

    def close(self):
        self.release.wait(30.0)


def closing_demo(monkeypatch) -> Demo:
    """A demo with nothing left to stop but its own client, which is stuck until released,
    and a teardown guard of 0.2 s."""
    import dovit_ros.ros.segmenter as segmenter
    monkeypatch.setattr(segmenter, 'TEARDOWN_S', 0.2)
    d = bare_demo()
    d.player = d.node = None
    d.client = StuckClient()
    return d


@pytest.mark.parametrize('code', [0, 1])
def test_a_stuck_client_teardown_ends_the_demo_with_its_result(monkeypatch, code, capsys):
    d, exits = closing_demo(monkeypatch), []

    def exit_fn(c):   # stands in for os._exit: records the code, then unblocks the close
        exits.append(c)
        d.client.release.set()
    d.close(False, code, exit_fn=exit_fn)
    assert exits == [code]
    assert 'teardown did not finish' in capsys.readouterr().err


def test_a_prompt_teardown_does_not_exit_early(monkeypatch):
    d, exits = closing_demo(monkeypatch), []
    d.client.release.set()
    d.close(False, 0, exit_fn=exits.append)
    time.sleep(0.4)   # past the guard's time: it must have been cancelled
    assert exits == []
