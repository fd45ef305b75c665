"""Drive a `segment_node` process over real DDS: start it, feed it images, collect its outputs.

Shared by the tests, the demo and scripts/node_overhead.py. Every process of a run gets the
same fresh ROS_DOMAIN_ID, claimed on this machine (parallel runs never cross), and the same
FASTDDS_BUILTIN_TRANSPORTS (set on one side only, Fast DDS participants do not even discover
each other).

Transports: UDP_SHM (Fast DDS's DEFAULT, UDPv4 + shared memory) unless a caller asks for
LARGE_DATA. A `Client` lives in the caller's process, which must be able to exit: Fast DDS
3.2.3's TCP transport (LARGE_DATA) can deadlock while a participant is deleted
(TCPChannelResourceBasic::disconnect waits for a mutex its own listening thread holds in a
blocking recv(); fixed upstream in eProsima/Fast-DDS#6066, not in the 3.2.3 wheels), which hung
about one test suite run in eight. UDP_SHM carries frames up to a few hundred kB reliably; the
demo and the benchmarks, with camera-sized frames, pass LARGE_DATA and accept that risk.
"""
from __future__ import annotations

import array
import fcntl
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from .node import FRAME_STATS, IMAGE_OUTPUTS, NODE_NAME

TRANSPORT_VAR = 'FASTDDS_BUILTIN_TRANSPORTS'
LARGE_DATA = 'LARGE_DATA'   # UDP discovery, TCP + shared memory for data: frames of any size
UDP_SHM = 'DEFAULT'         # no TCP: no teardown deadlock; best-effort frames over ~0.5 MB lost


_DOMAIN_CLAIMS: list = []   # open lock files: each claim lasts as long as this process


def fresh_domain_id() -> int:
    """A ROS_DOMAIN_ID in 100..199 that no other process on this machine (and no earlier call
    in this one) holds: each is claimed with an exclusive flock on a file in the temp folder,
    released when this process exits. A drawn id alone (pid + random) let two test runs share
    a domain, where two nodes of the same name answer the same parameter services."""
    claims = Path(tempfile.gettempdir()) / 'dovit_ros_domains'
    claims.mkdir(exist_ok=True)
    start = random.randrange(100)
    for k in range(100):
        domain = 100 + (start + k) % 100
        f = open(claims / f'{domain}.lock', 'w')   # not inherited by child processes
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:   # held by another process, or by this one for an earlier call
            f.close()
            continue
        _DOMAIN_CLAIMS.append(f)
        return domain
    raise RuntimeError(f'no free ROS_DOMAIN_ID in 100..199 ({claims} holds 100 claims)')


def ros_env(domain_id: int, transports: str | None = UDP_SHM, threads: int | None = 1,
            base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    if transports:
        env[TRANSPORT_VAR] = transports
    else:
        env.pop(TRANSPORT_VAR, None)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
        env['MKL_NUM_THREADS'] = str(threads)
    return env


@contextmanager
def _environ(changes: dict):
    old = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NodeProcess:
    """`segment_node` as a child process; its log lines are collected as they come."""

    def __init__(self, ros_args: Iterable[str], env: dict, cwd: str | None = None,
                 echo: bool = False):
        # The installed console script when there is one (as ros2 run would start it).
        exe = Path(sys.executable).with_name('segment_node')
        cmd = [str(exe)] if exe.is_file() else [sys.executable, '-m', 'dovit_ros.ros.node']
        cmd += ['--ros-args', *ros_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd, text=True,
                                     bufsize=1)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._echo = echo
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if self._echo:
                sys.stderr.write('[node] ' + line)
            with self._changed:
                self.lines.append(line.rstrip('\n'))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return '\n'.join(self.lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        """True once a log line contains `text`; False on timeout or when the process ends."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if any(text in line for line in self.lines):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return False
                self._changed.wait(min(left, 0.2))

    def stop(self, sig: int = 2, timeout: float = 10.0) -> int:
        """Send `sig` (SIGINT by default) and wait; kill after `timeout`. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2.0)
        return self.proc.returncode


def image_msg(rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = 'camera',
              encoding: str = 'rgb8') -> Image:
    """An rgb8 (or bgr8) Image from an (H, W, 3) uint8 array."""
    h, w = rgb.shape[:2]
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(rgb[..., ::-1] if encoding == 'bgr8' else rgb))
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def diag_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class Client:
    """An rclpy node in its own context, spun by hand (`spin_until`), that subscribes to the
    segmenter's outputs and /diagnostics and keeps what arrives, keyed by header stamp."""

    def __init__(self, domain_id: int, transports: str | None = UDP_SHM,
                 namespace: str = '', name: str = 'dovit_client'):
        self.context = Context()
        with _environ({TRANSPORT_VAR: transports}):
            rclpy.init(context=self.context, domain_id=domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
            self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.prefix = f'{namespace.rstrip("/")}/{NODE_NAME}'
        self.outputs: dict[str, dict[tuple[int, int], object]] = {}
        self.diagnostics: list[DiagnosticArray] = []
        self._subs: dict[str, object] = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                                      QoSProfile(depth=10))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # outputs ------------------------------------------------------------------------------
    def subscribe(self, names: Iterable[str] = IMAGE_OUTPUTS + (FRAME_STATS,),
                  on_message: Callable | None = None) -> None:
        for name in names:
            if name in self._subs:
                continue
            store = self.outputs.setdefault(name, {})

            def keep(msg, store=store, name=name):
                store[stamp_of(msg)] = msg
                if on_message is not None:
                    on_message(name, msg)
            # `front/frame_stats`: a camera's outputs when the node serves several
            kind = DiagnosticArray if name.rsplit('/', 1)[-1] == FRAME_STATS else Image
            topic = name if name.startswith('/') else f'{self.prefix}/{name}'   # absolute: as is
            self._subs[name] = self.node.create_subscription(kind, topic, keep,
                                                             QoSProfile(depth=5))

    def unsubscribe(self, names: Iterable[str] | None = None) -> None:
        for name in list(self._subs if names is None else names):
            sub = self._subs.pop(name, None)
            if sub is not None:
                self.node.destroy_subscription(sub)

    def got(self, stamp: tuple[int, int], names: Iterable[str] | None = None) -> bool:
        names = list(self._subs if names is None else names)
        return all(stamp in self.outputs.get(n, {}) for n in names)

    # spinning -----------------------------------------------------------------------------
    def spin_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(left, 0.05))
        return True

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    # input --------------------------------------------------------------------------------
    def image_publisher(self, topic: str, reliability: str = 'reliable',
                        compressed: bool = False):
        rel = ReliabilityPolicy.RELIABLE if reliability == 'reliable' else \
            ReliabilityPolicy.BEST_EFFORT
        return self.node.create_publisher(CompressedImage if compressed else Image, topic,
                                          QoSProfile(depth=1, reliability=rel))

    def wait_matched(self, publisher, timeout: float = 20.0) -> bool:
        return self.spin_until(lambda: publisher.get_subscription_count() > 0, timeout)

    def send_until_output(self, publisher, make_msg: Callable[[tuple[int, int]], object],
                          first_stamp: tuple[int, int], names: Iterable[str] | None = None,
                          timeout: float = 60.0, period: float = 1.0) -> tuple[int, int] | None:
        """Publish new frames (stamps counting up from `first_stamp`) every `period` s until
        one comes back on every output in `names`: the node has discovered this client's
        subscriptions. The stamp that came back, or None on timeout."""
        sent: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        sec, nsec = first_stamp
        while time.monotonic() < deadline:
            stamp = (sec, nsec + len(sent))
            publisher.publish(make_msg(stamp))
            sent.append(stamp)
            ok = self.spin_until(lambda: any(self.got(s, names) for s in sent),
                                 min(period, max(deadline - time.monotonic(), 0)))
            if ok:
                return next(s for s in sent if self.got(s, names))
        return None

    def link_report(self, publisher=None, names: Iterable[str] | None = None) -> str:
        """What this client sees of the DDS links, for a failed assertion's message: how many
        subscriptions `publisher` has matched, how many publishers each output subscription
        has, and the frame counters of every segmenter status received last. It tells a frame
        that never reached a node from an output that never came back."""
        lines = []
        if publisher is not None:
            lines.append(f'{publisher.topic_name}: {publisher.get_subscription_count()} '
                         'subscription(s) matched')
        for name in (self._subs if names is None else names):
            sub = self._subs.get(name)
            if sub is not None:
                lines.append(f'{sub.topic_name}: {sub.get_publisher_count()} publisher(s) '
                             f'matched, {len(self.outputs.get(name, {}))} message(s) kept')
        last: dict[str, dict] = {}
        for arr in self.diagnostics:
            for st in arr.status:
                last[st.name] = diag_values(st)
        for status, kv in last.items():
            counts = {k: v for k, v in kv.items() if k.startswith('frames') or k == 'input topic'}
            lines.append(f'{status}: {counts}')
        lines.append(f'/diagnostics arrays received: {len(self.diagnostics)}')
        return '\n'.join(lines)

    # parameters ---------------------------------------------------------------------------
    def _param_client(self, node: str):
        from rclpy.parameter_client import AsyncParameterClient
        if not hasattr(self, '_param_clients'):
            self._param_clients = {}
        if node not in self._param_clients:
            pc = AsyncParameterClient(self.node, node)
            self._param_clients[node] = pc
            done = []
            self.spin_until(lambda: done.append(pc.services_are_ready()) or done[-1], 30.0)
        return self._param_clients[node]

    def _call(self, future, timeout: float):
        if not self.spin_until(future.done, timeout):
            raise TimeoutError('parameter service did not answer')
        return future.result()

    def set_params(self, values: dict, node: str | None = None, timeout: float = 20.0
                   ) -> list[tuple[bool, str]]:
        """(successful, reason) for each parameter, set one request per parameter."""
        from rclpy.parameter import Parameter
        pc = self._param_client(node or self.prefix)
        res = self._call(pc.set_parameters([Parameter(k, value=v) for k, v in values.items()]),
                         timeout)
        return [(r.successful, r.reason) for r in res.results]

    def get_params(self, names: list[str], node: str | None = None, timeout: float = 20.0
                   ) -> dict:
        from rclpy.parameter import parameter_value_to_python
        pc = self._param_client(node or self.prefix)
        res = self._call(pc.get_parameters(list(names)), timeout)
        return {n: parameter_value_to_python(v) for n, v in zip(names, res.values)}

    def last_diagnostics(self) -> dict | None:
        """Key/values of the newest segmenter status received so far (no waiting)."""
        for arr in reversed(self.diagnostics):
            for st in arr.status:
                if st.name.startswith(NODE_NAME):
                    return self._kv(st)
        return None

    @staticmethod
    def _kv(status) -> dict:
        kv = diag_values(status)
        kv['_level'] = status.level[0] if isinstance(status.level, bytes) else status.level
        kv['_message'] = status.message
        return kv

    def first_diagnostics(self, match: Callable[[object], object], timeout: float):
        """match(array) of the first /diagnostics array from now on for which it is not None
        (None on timeout)."""
        start = len(self.diagnostics)
        found: list = []

        def check() -> bool:
            for arr in self.diagnostics[start:]:
                got = match(arr)
                if got is not None:
                    found.append(got)
                    return True
            return False
        self.spin_until(check, timeout)
        return found[0] if found else None

    def latest_diagnostics(self, predicate: Callable[[dict], bool], timeout: float
                           ) -> dict | None:
        """Key/values of the first diagnostics status from now on that satisfies `predicate`."""
        def match(arr):
            kvs = (self._kv(st) for st in arr.status if st.name.startswith(NODE_NAME))
            return next((kv for kv in kvs if predicate(kv)), None)
        return self.first_diagnostics(match, timeout)


def make_test_model(path: Path, patch_size: int = 16, dim: int = 32, depth: int = 4,
                    heads: int = 2, seed: int = 0) -> Path:
    """A small random-weight CamVid model directory (for tests and tools, not for results)."""
    import torch

    from ..data.classes import camvid_classes
    from ..model import DoViTSegmenter, ExitConfig, ViTConfig
    from ..runtime.artifacts import ModelMeta, save_model_dir

    torch.manual_seed(seed)
    classes = camvid_classes()
    cfg = ViTConfig(num_classes=classes.num_classes, dim=dim, depth=depth, heads=heads,
                    patch_size=patch_size, img_size=(max(patch_size * 4, 64),) * 2,
                    decision_points=(1, 2, 3), decoder_dim=32)
    meta = ModelMeta(architecture=cfg, classes=classes, input_size=(96, 128),
                     exits=ExitConfig(policy='threshold', threshold=0.9, topk_per_class=2),
                     name='test-tiny')
    return save_model_dir(path, DoViTSegmenter(cfg).eval(), meta)
