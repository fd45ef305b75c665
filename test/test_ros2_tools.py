"""The package through the real ROS 2 tools, as a user meets it: `colcon build` into a temporary
workspace, then `ros2 launch` (segment.launch.py and .xml), `ros2 run`, `ros2 node/param/topic`
against the running nodes while `dovit-bag play` plays the shipped clip, demo.launch.py (bag
with /clock into the node on sim time, rviz:=true without rviz2), `colcon test`, and SIGINT.
README's "With a ROS 2 install" lists the same commands.

Runs when ../shared/ros2cli is present (its tools installed in this venv: `make test` does
that) or when a real `ros2` and `colcon` are on PATH (a sourced ROS 2 install); skipped with the
reason otherwise. Every process gets this module's own ROS_DOMAIN_ID and the same
FASTDDS_BUILTIN_TRANSPORTS (DEFAULT, see TRANSPORTS). The CLI's daemon is not used (it did
not see the node here): `--no-daemon`, and discovery is waited for as a condition (polled,
with a bounded timeout), never assumed after a fixed sleep.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from dovit_ros.bag.storage import BagReader
from dovit_ros.ros.harness import UDP_SHM, NodeProcess, fresh_domain_id, make_test_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLI = ROOT.parent / 'shared' / 'ros2cli'
CLIP = ROOT / 'config' / 'demo' / 'camvid_0016E5_30f.mcap'
NODE = '/dovit_segmenter'
DOMAIN = fresh_domain_id()
CLI = ['--no-daemon', '--spin-time', '2']   # ros2 node/topic: discover without the daemon
READY_S = 120       # model load + warm-up on 2 busy cores
# A node, service or topic showing up in the graph. Measured on the development machine with
# three training processes on its 2 cores (load average 8): up to 45 s for a new CLI process
# to have seen three nodes; a few seconds when idle.
DISCOVERY_S = 90
# Fast DDS's DEFAULT transports (UDPv4 + shared memory) for every process here, the launch
# files' large_data:=false. With LARGE_DATA (TCP for everything after discovery), the
# short-lived CLI processes hit Fast DDS 3.2's TCP teardown deadlock (see TEARDOWN_DEADLOCK)
# often enough on 2 busy cores that three tries in a row could fail; these tests are about the
# tools and the package, not the transport. (The harness's default is the same, UDP_SHM, for
# the same reason; test_node.py's 6 MB-frame test covers LARGE_DATA, its client in a child
# process.)
TRANSPORTS = UDP_SHM
NO_LARGE_DATA = 'large_data:=false'


# ------------------------------------------------------------------------------ environment
def _tool_env() -> tuple[dict | None, str]:
    """(environment with ros2 and colcon, how) or (None, why not)."""
    venv_bin = Path(sys.executable).parent
    if (SHARED_CLI / 'install.sh').is_file():
        if not (venv_bin / 'ros2').is_file() or not (venv_bin / 'colcon').is_file():
            return None, (f'{SHARED_CLI} is here but its tools are not installed in '
                          f'{venv_bin.parent}: run `make test` or `{SHARED_CLI}/install.sh '
                          f'{venv_bin.parent}`')
        out = subprocess.run(['bash', '-c', f'eval "$("{SHARED_CLI}/install.sh" '
                              f'"{venv_bin.parent}" --env)" && env -0'],
                             capture_output=True, check=True).stdout.decode()
        env = dict(kv.split('=', 1) for kv in out.split('\0') if '=' in kv)
        return env, f'{SHARED_CLI} tools'
    if shutil.which('ros2') and shutil.which('colcon'):
        return dict(os.environ), 'the ROS 2 install on PATH'
    return None, ('neither ../shared/ros2cli nor `ros2` and `colcon` on PATH (source a ROS 2 '
                  'install to run these tests)')


ENV, HOW = _tool_env()
# Was flaky on 2 busy cores (1-2 of 6 failing per module run). Causes found and fixed: a second
# SIGINT from `ros2 launch` cut the bag player's summary (dovit_ros/bag/play.py now stops on a
# flag); concurrent test runs could draw the same domain id (harness.fresh_domain_id claims
# them); the CLI processes' Fast DDS TCP teardown deadlock under LARGE_DATA (TRANSPORTS).
pytestmark = pytest.mark.skipif(ENV is None, reason=HOW)


def ros_env(base: dict) -> dict:
    env = dict(base)
    env.update(ROS_DOMAIN_ID=str(DOMAIN), FASTDDS_BUILTIN_TRANSPORTS=TRANSPORTS,
               PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0', OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1',
               # every lost service reply logged, not only the first (see REPLY_LOST)
               PYTHONWARNINGS='always::RuntimeWarning')
    env.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
    return env


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """`colcon build` of this checkout (symlinked into src/) and the environment of its
    install, as `source install/setup.bash` would give it."""
    ws = tmp_path_factory.mktemp('ws')
    (ws / 'src').mkdir()
    (ws / 'src' / 'dovit_ros').symlink_to(ROOT)
    env = ros_env(ENV)
    r = subprocess.run(['colcon', 'build', '--packages-select', 'dovit_ros'], cwd=ws, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    prefix = ws / 'install' / 'dovit_ros'
    [site] = prefix.glob('lib/python3*/site-packages')
    for exe in ('segment_node', 'dovit-bag'):   # where ros2 run / ros2 launch look
        assert (prefix / 'lib' / 'dovit_ros' / exe).is_file(), exe
    for f in ('launch/segment.launch.py', 'launch/segment.launch.xml', 'launch/demo.launch.py',
              'config/overlay.rviz', 'config/demo/camvid_0016E5_30f.mcap', 'package.xml'):
        assert (prefix / 'share' / 'dovit_ros' / f).is_file(), f
    env['AMENT_PREFIX_PATH'] = f'{prefix}:{env.get("AMENT_PREFIX_PATH", "")}'.rstrip(':')
    env['PYTHONPATH'] = f'{site}:{env.get("PYTHONPATH", "")}'.rstrip(':')
    return ws, env


@pytest.fixture(scope='module')
def env(workspace):
    return workspace[1]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """A tiny random-weight model: these tests are about the tools, not about accuracy."""
    return make_test_model(tmp_path_factory.mktemp('model') / 'tiny')


def ros2(env: dict, *args: str, timeout: float = DISCOVERY_S + 60
         ) -> subprocess.CompletedProcess:
    # bounded above the CLI's own --timeout, so that one reports, not this
    return run_cli(['ros2', *args], env, timeout)


def in_turn(*calls):
    """Independent CLI calls, one after the other: run at once on 2 busy cores, each new
    participant slows discovery for all, and a `ros2 param get` was seen waiting over 150 s
    for a reply that never came (its service call has no timeout)."""
    return [c() for c in calls]


def wait_for_node(env: dict, *names: str, timeout: float = DISCOVERY_S) -> set[str]:
    """`ros2 node list` until each of `names` has been in its output; the names seen.

    Each call lists what it discovered in its --spin-time: on 2 busy cores one call often sees
    only some of the nodes (measured: 1 to 3 of 3 per 2 s call), so the condition is that each
    node shows up, not that one call shows all."""
    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        seen |= set(ros2(env, 'node', 'list', *CLI).stdout.split())
        if set(names) <= seen:
            return seen
    raise AssertionError(f'{set(names) - seen} not in `ros2 node list` within {timeout:.0f} s '
                         f'(seen: {sorted(seen)})')


def wait_for_output(env: dict, args: tuple[str, ...], pattern: str,
                    timeout: float = DISCOVERY_S) -> str:
    """Run `ros2 ARGS` until its output matches `pattern` (graph queries see what their
    --spin-time discovered); that output."""
    deadline, out = time.monotonic() + timeout, ''
    while time.monotonic() < deadline:
        out = ros2(env, *args).stdout
        if re.search(pattern, out):
            return out
    raise AssertionError(f'`ros2 {" ".join(args)}` never matched {pattern!r}:\n{out}')


# Two failures of the tools themselves, diagnosed here on 2 cores kept busy by three training
# jobs (about one `ros2` call in ten):
# - rclpy's warning when a service reply is dropped: the server had not yet discovered the
#   caller's reply reader (rmw_fastrtps waits only briefly for it); the CLI then waits for the
#   reply forever (its service call has no timeout);
# - a `ros2` process that never exits: Fast DDS 3.2's TCP transport (LARGE_DATA) deadlocks in
#   TCPChannelResourceBasic::disconnect while deleting the CLI's participant (the node works
#   around the same bug after a failed start, see ros/segmenter.py run()).
# - `ros2 param` gives up after a hard-coded 5 s when the node is in the graph but its
#   parameter services are not yet ("Wait for service timed out ...").
# - a `ros2 param` call still waiting in rcl_wait after NO_REPLY_S with nothing in the node's
#   log (seen once in 4 module runs, DEFAULT transports: the reply or the request lost the same
#   way as above, unlogged): discovery of the node's services takes at most ~45 s here, so a
#   call still waiting after that is waiting for a reply that will not come.
# A call that hit one of them, recognised by the node's log, the CLI's message or the
# process's native stack, is made again (at most RETRIES times; the calls used here are
# idempotent). Anything else that does not answer fails the test, with the stack.
REPLY_LOST = 'failed to send response (timeout): client will not receive response'
SERVICES_NOT_YET = 'Wait for service timed out waiting for parameter services'
TEARDOWN_DEADLOCK = 'TCPChannelResourceBasic::disconnect'
STALL_S = 30        # a call still running after this long gets its stack looked at
NO_REPLY_S = 75     # a parameter call waiting in rcl_wait this long gets no reply
RETRIES = 2


def native_stack(pid: int) -> str:
    """The main thread's native stack (gdb), to tell a known tool failure from anything else."""
    if not shutil.which('gdb'):
        return '(no gdb)'
    r = subprocess.run(['gdb', '-p', str(pid), '-batch', '-ex', 'thread 1', '-ex', 'bt 40'],
                       capture_output=True, text=True, timeout=120)
    return '\n'.join(line[:160] for line in r.stdout.splitlines() if line.startswith('#'))


def _attempt(cmd, env, timeout, server):
    """One run: ('done', result) | ('retry', why) | ('stuck', stack)."""
    lost_before = server.count(re.escape(REPLY_LOST)) if server else 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    start = time.monotonic()
    next_look, stack = start + STALL_S, ''
    while proc.poll() is None and time.monotonic() < start + timeout:
        if server and server.count(re.escape(REPLY_LOST)) > lost_before:
            proc.kill()
            proc.communicate()
            return 'retry', 'the node logged the reply as lost'
        if time.monotonic() >= next_look:
            stack, next_look = native_stack(proc.pid), time.monotonic() + 15
            if TEARDOWN_DEADLOCK in stack:
                proc.kill()
                out, err = proc.communicate()
                if out.strip():   # it had answered; only its exit hung
                    return 'done', subprocess.CompletedProcess(cmd, 0, out, err)
                return 'retry', 'Fast DDS TCP teardown deadlock before it answered'
            if server and 'rcl_wait' in stack and time.monotonic() - start >= NO_REPLY_S:
                proc.kill()
                proc.communicate()
                return 'retry', f'no reply within {NO_REPLY_S} s (waiting in rcl_wait)'
        time.sleep(0.1)
    if proc.poll() is None:
        stack = native_stack(proc.pid)
        proc.kill()
        proc.communicate()
        return 'stuck', stack
    out, err = proc.communicate()
    if SERVICES_NOT_YET in err:
        return 'retry', 'parameter services not discovered within the CLI\'s 5 s'
    return 'done', subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_cli(cmd: list[str], env: dict, timeout: float, server: Proc | None = None
            ) -> subprocess.CompletedProcess:
    """Run a ROS 2 tool; `server`: the node process it talks to (its log shows lost replies)."""
    whys = []
    for _ in range(RETRIES + 1):
        state, value = _attempt(cmd, env, timeout, server)
        if state == 'done':
            return value
        if state == 'stuck':
            raise AssertionError(f'`{" ".join(cmd)}` did not answer within {timeout:.0f} s; '
                                 f'its main thread:\n{value}')
        whys.append(value)
    raise AssertionError(f'`{" ".join(cmd)}` failed {len(whys)} times: {whys}')


def param_call(env, server: Proc, *args: str) -> subprocess.CompletedProcess:
    """`ros2 param VERB --no-daemon --timeout N ARGS...` against the node `server` runs."""
    cmd = ['ros2', 'param', *args[:1], '--no-daemon', '--timeout', str(DISCOVERY_S), *args[1:]]
    return run_cli(cmd, env, DISCOVERY_S + 60, server)


def param_get(env, server: Proc, node: str, name: str) -> str:
    r = param_call(env, server, 'get', node, name)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def param_set(env, server: Proc, node: str, name: str, value: str) -> tuple[bool, str]:
    """(accepted, the CLI's message)."""
    r = param_call(env, server, 'set', node, name, value)
    text = (r.stdout + r.stderr).strip()
    assert 'successful' in text or 'failed' in text, text
    return 'Set parameter successful' in text, text


def echo_once(env, topic, msg_type, *opts: str, timeout=DISCOVERY_S) -> dict:
    """The first message on `topic` as `ros2 topic echo --once` prints it."""
    # --no-lost-messages: the 'A message was lost' notice would precede the message (seen)
    r = ros2(env, 'topic', 'echo', '--once', '--no-daemon', '--no-lost-messages', *opts, topic,
             msg_type, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return yaml.safe_load(r.stdout.split('\n---')[0])


def clip_stamps() -> set[tuple[int, int]]:
    """Header stamps of the shipped clip's frames."""
    with BagReader(CLIP) as bag:
        topic, _ = bag.image_topic()
        return {(m.header.stamp.sec, m.header.stamp.nanosec)
                for m in (x.decode() for x in bag.messages([topic]))}


class Proc(NodeProcess):
    """Any command (`ros2 launch`, `ros2 run`, `dovit-bag`, ...) with NodeProcess's output
    collection, `wait_for` and `stop`."""

    def __init__(self, cmd: list[str], env: dict):   # noqa: super().__init__ builds its own
        # A session of its own: stop() signals the whole process group, as Ctrl-C in a
        # terminal does (`ros2 run` relies on that: it does not forward SIGINT to the node).
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._echo = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send_signal(self, sig: int) -> None:
        self.signalled = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Ctrl-C (or `sig`) to the process group, once, and wait; SIGKILL after `timeout`."""
        if not getattr(self, 'signalled', False):
            self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._reader.join(2.0)
        return self.proc.returncode

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.output))

    def wait_count(self, pattern: str, n: int, timeout: float) -> bool:
        """True once `pattern` occurs `n` times in the output (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return self.count(pattern) >= n
            time.sleep(0.1)
        return True


def wait_for_jump_back(clock: Proc, timeout: float) -> bool:
    """True once the `ros2 topic echo --csv /clock` output goes back in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and clock.proc.poll() is None:
        times = [int(s) * 10**9 + int(ns) for s, ns in
                 re.findall(r'^(\d+),(\d+)$', clock.output, re.M)]
        if any(b < a for a, b in zip(times, times[1:])):
            return True
        time.sleep(0.2)
    return False


def stop_all(procs: list[Proc], timeout: float = 30.0) -> list[int]:
    """Ctrl-C to all at once, then their exit codes."""
    for p in procs:
        p.send_signal(signal.SIGINT)
    return [p.stop(signal.SIGINT, timeout) for p in procs]


def player(env, *extra: str) -> Proc:
    """The shipped clip, decompressed to Image rgb8 on /camera/image_raw, looped."""
    return Proc(['ros2', 'run', 'dovit_ros', 'dovit-bag', 'play', str(CLIP), '--decompress',
                 '--loop', '--quiet', *extra], env)


# ------------------------------------------------------------------------------ the tests
@pytest.fixture(scope='module')
def launched(env, model_dir):
    """The node three ways at once: segment.launch.py (root namespace), segment.launch.xml
    (namespace /xml) and `ros2 run` (namespace /run, a QoS override on an output), all
    subscribed to /camera/image_raw."""
    common = ['image:=/camera/image_raw', f'model:={model_dir}', NO_LARGE_DATA]
    procs = {
        'py': Proc(['ros2', 'launch', 'dovit_ros', 'segment.launch.py', *common], env),
        'xml': Proc(['ros2', 'launch', 'dovit_ros', 'segment.launch.xml', *common,
                     'namespace:=/xml'], env),
        'run': Proc(['ros2', 'run', 'dovit_ros', 'segment_node', '--ros-args',
                     '-r', '__ns:=/run', '-r', 'image:=/camera/image_raw',
                     '-p', f'model:={model_dir}', '-p', 'input_transport:=raw',
                     '-p', 'qos_overrides./run/dovit_segmenter/labels.publisher.reliability:='
                     'best_effort'], env),
    }
    try:
        for name, p in procs.items():
            assert p.wait_for('ready: segmenting /camera/image_raw', READY_S), \
                f'{name}:\n{p.output}'
        yield procs
    finally:
        stop_all(list(procs.values()))


def test_nodes_are_listed_and_come_from_the_workspace(launched, env, workspace, model_dir):
    wait_for_node(env, NODE, '/xml' + NODE, '/run' + NODE)
    install = str(workspace[0] / 'install' / 'dovit_ros')
    for p in launched.values():
        assert re.search(rf'model {re.escape(str(model_dir))} loaded and warmed up', p.output)
    # the deprecated parameter name given to `ros2 run` still works, with a warning
    assert 'parameter input_transport is deprecated: use image_transport' in \
        launched['run'].output
    assert install in ros2(env, 'pkg', 'prefix', 'dovit_ros').stdout


def test_param_describe_get_set(launched, env):
    py = launched['py']
    r = param_call(env, py, 'describe', NODE, 'threshold', 'policy', 'target_gflops')
    assert r.returncode == 0, r.stderr
    d = r.stdout
    assert re.search(r'Parameter name: threshold\s+Type: double', d), d
    assert re.search(r'Min value: 0\.0\s+Max value: 1\.0', d), d
    assert 'one of: none, threshold, dtop' in d, d
    assert re.search(r'Parameter name: target_gflops\s+Type: double', d), d
    assert re.search(r'Max value: 1000000\.0', d), d
    # invalid values: refused with the reason (rclpy checks the descriptor's range, the
    # node's callback the rest)
    refused = in_turn(lambda: param_set(env, py, NODE, 'threshold', '1.5'),
                      lambda: param_set(env, py, NODE, 'policy', 'fast'),
                      lambda: param_set(env, py, NODE, 'target_gflops', '-1.0'))
    for (ok, text), why in zip(refused, (
            r'threshold.*(out of range|outside).*(1\.0|1\b).*1\.5|threshold.*1\.5.*outside',
            r"policy: 'fast' is not one of none, threshold, dtop",
            r'target_gflops.*(out of range|outside).*-1\.0')):
        assert not ok and re.search(why, text), text
    # valid values: applied; the refused target_gflops kept its old value
    for ok, text in in_turn(lambda: param_set(env, py, NODE, 'threshold', '0.95'),
                            lambda: param_set(env, py, NODE, 'policy', 'dtop')):
        assert ok, text
    assert in_turn(*(lambda n=n: param_get(env, py, NODE, n)
                     for n in ('threshold', 'policy', 'target_gflops'))) == [
        'Double value is: 0.95', 'String value is: dtop', 'Double value is: 0.0']
    ok, text = param_set(env, py, NODE, 'target_gflops', '0.01')
    assert ok, text
    # while a compute-budget target is on, threshold is the controller's (the reason names
    # the target's value: 0.01 was applied)
    ok, text = param_set(env, py, NODE, 'threshold', '0.9')
    assert not ok and 'steered by the compute budget (target_gflops=0.01)' in text, text
    # launch arguments reached the XML-launched node the same way
    # (its model argument: the log line 'model <the test model's directory> loaded')
    assert param_get(env, launched['xml'], '/xml' + NODE, 'use_sim_time') == \
        'Boolean value is: False'


@pytest.fixture
def playing(launched, env):
    """The shipped clip looping into /camera/image_raw while a test runs."""
    play = player(env)
    yield play
    stop_all([play])


def test_outputs_through_topic_echo_and_hz(launched, env, playing):
    stamps = clip_stamps()
    labels, stats, qos = in_turn(
        lambda: echo_once(env, NODE + '/labels', 'sensor_msgs/msg/Image', '--no-arr'),
        lambda: echo_once(env, NODE + '/frame_stats', 'diagnostic_msgs/msg/DiagnosticArray'),
        lambda: wait_for_output(env, ('topic', 'info', '-v', *CLI, '/run' + NODE + '/labels'),
                                r'Node name: dovit_segmenter\s+Node namespace: /run'))
    # headers copied from the clip's frames
    for msg in (labels, stats):
        h = msg['header']
        assert h['frame_id'] == 'camera'
        assert (h['stamp']['sec'], h['stamp']['nanosec']) in stamps, h
    assert (labels['height'], labels['width'], labels['encoding']) == (360, 480, 'mono8')
    [status] = stats['status']
    kv = {v['key']: v['value'] for v in status['values']}
    assert (kv['width'], kv['height']) == ('480', '360') and float(kv['gflops']) > 0
    # the QoS override given to `ros2 run` applies to the output, which flows
    assert re.search(r'Endpoint type: PUBLISHER.*?Reliability: BEST_EFFORT', qos, re.S), qos
    run_labels = echo_once(env, '/run' + NODE + '/labels', 'sensor_msgs/msg/Image', '--no-arr')
    h = run_labels['header']
    assert (h['stamp']['sec'], h['stamp']['nanosec']) in stamps, h
    # rate of ~/labels while the clip plays at 15 Hz
    hz = Proc(['ros2', 'topic', 'hz', '--window', '20', NODE + '/labels'], env)
    try:
        # one report a second; the later ones average over a full window
        assert hz.wait_count(r'average rate', 4, DISCOVERY_S), hz.output
    finally:
        hz.stop(signal.SIGINT, timeout=10)
    rates = [float(x) for x in re.findall(r'average rate: ([0-9.]+)', hz.output)]
    assert rates, hz.output
    # never more frames out than in (the clip is 15 Hz); how many is a benchmark's business
    assert 0 < rates[-1] <= 15.0 * 1.25, hz.output


def test_sigint_ends_launch_and_run_cleanly(launched):
    codes = stop_all(list(launched.values()))
    for (name, p), code in zip(launched.items(), codes):
        assert code == 0, f'{name} exited {code}:\n{p.output}'
    for name in ('py', 'xml'):
        assert re.search(r'\[segment_node-1\]: process has finished cleanly',
                         launched[name].output), launched[name].output


def test_demo_launch_plays_the_clip_on_sim_time(env):
    """demo.launch.py with its defaults (the installed model and clip) and rviz:=true where
    rviz2 is not installed: the node runs on /clock from the bag, looped."""
    if shutil.which('rviz2', path=env.get('PATH')):
        pytest.skip('rviz2 is installed here: this test covers the case without it')
    demo = Proc(['ros2', 'launch', 'dovit_ros', 'demo.launch.py', 'rviz:=true', 'rate:=2.0',
                 NO_LARGE_DATA], env)
    try:
        check_demo(env, demo)
    except AssertionError as e:   # with what the launch printed
        raise AssertionError(f'{e}\n--- ros2 launch demo.launch.py:\n{demo.output[-6000:]}')
    finally:
        if demo.proc.poll() is None:
            demo.stop(signal.SIGKILL, timeout=5)


def check_demo(env, demo: Proc) -> None:
    """The demo's checks (the caller adds the launch output to a failure)."""
    assert demo.wait_for('ready: segmenting /camera/image_raw', READY_S), demo.output
    assert 'rviz:=true but rviz2 is not installed' in demo.output
    stamps = clip_stamps()
    sim, labels, clock = in_turn(
        lambda: param_get(env, demo, NODE, 'use_sim_time'),
        lambda: echo_once(env, NODE + '/labels', 'sensor_msgs/msg/Image', '--no-arr'),
        lambda: echo_once(env, '/clock', 'rosgraph_msgs/msg/Clock'))
    assert sim == 'Boolean value is: True'
    h = labels['header']
    assert (h['stamp']['sec'], h['stamp']['nanosec']) in stamps
    # /clock is bag time: within the clip's span
    t = clock['clock']['sec'] + clock['clock']['nanosec'] * 1e-9
    lo, hi = min(stamps), max(stamps)
    assert lo[0] + lo[1] * 1e-9 - 1e-6 <= t <= hi[0] + hi[1] * 1e-9 + 0.2, clock
    # looped: /clock jumps back to the clip's start (1 s a loop at rate 2)
    clock = Proc(['ros2', 'topic', 'echo', '--csv', '--no-daemon', '/clock',
                  'rosgraph_msgs/msg/Clock'], env)
    try:
        assert wait_for_jump_back(clock, DISCOVERY_S), clock.output[-2000:]
    finally:
        clock.stop(signal.SIGINT, timeout=10)
    code = demo.stop(signal.SIGINT, timeout=30)
    assert code == 0, demo.output
    m = re.search(r'played (\d+) loop\(s\)', demo.output)
    assert m and int(m.group(1)) >= 1, demo.output
    n = re.search(r'/camera/image_raw: (\d+) messages', demo.output)
    assert n and int(n.group(1)) > len(stamps), demo.output
    assert re.search(r'\[segment_node-1\]: process has finished cleanly', demo.output)


def test_colcon_test_runs_the_package_tests(workspace):
    ws, env = workspace
    r = subprocess.run(['colcon', 'test', '--packages-select', 'dovit_ros',
                        '--pytest-args', 'test/test_package_xml.py'],
                       cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = subprocess.run(['colcon', 'test-result', '--all', '--verbose'], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=60)
    m = re.search(r'(\d+) tests?, (\d+) errors?, (\d+) failures?', res.stdout)
    assert m, res.stdout + res.stderr
    assert int(m.group(1)) > 0 and m.group(2, 3) == ('0', '0'), res.stdout
