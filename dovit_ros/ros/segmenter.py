"""The segmentation node itself (rclpy): parameters and the worker thread; its diagnostics
are ros/diagnostics.py's mixin.

`dovit_ros.ros.node` is the light entry point that imports this module once its signal
handlers are in place; see its docstring for the threading model. Each camera's topics are a
`Camera` (ros/cameras.py): one by default, one per name of the `cameras` parameter. Their
callbacks fill one newest-frame slot per camera (runtime/slots.py); the worker takes every
waiting frame and runs them as one batch.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import NamedTuple

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from ..model import ExitConfig
from ..runtime.artifacts import ModelLoadError, read_meta
from ..runtime.batch import BatchSizes, observe_batch
from ..runtime.budget import BudgetChooser
from ..runtime.failures import FrameFailures
from ..runtime.frame import FrameProcessor
from ..runtime.pipeline import resolve_device, resolve_model_path
from ..runtime.slots import FrameSlots
from ..runtime.torch_thread import TorchThread
from . import qos
from .cameras import REJECT_LOG_PERIOD_S, Camera, Wanted
from .diagnostics import DiagnosticsMixin
from .names import EXIT_STARTUP, NODE_NAME
from .params import (BY_NAME, DYNAMIC, FROM_MODEL, PARAMETERS, FrameConfig, model_defaults,
                     resolve_aliases)
from .startup import descriptor, make_pipeline


class Job(NamedTuple):
    """A camera's decoded frame, waiting for the batch's forward."""
    camera: Camera
    header: object
    image: np.ndarray
    wanted: Wanted
    t_received: float


class StartupError(RuntimeError):
    """The node cannot start: bad parameter, missing/corrupt/incompatible model, no device."""


class SegmentNode(DiagnosticsMixin, Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._t_created = time.monotonic()
        self._stopping = False
        self._cfg_lock = threading.Lock()
        self.failures = FrameFailures()   # frames whose processing raised (worker only)
        self.batch_sizes = BatchSizes()
        self.cameras: list[Camera] = []
        self.slots: FrameSlots | None = None
        self._chooser: BudgetChooser | None = None   # worker thread only
        self._chooser_key = None
        self._budget_was_off = False   # set by parameter updates, read by the worker
        # every torch call of the node runs in this one thread (load, warm-up, frames): see
        # runtime/torch_thread.py for the 1.4x it costs otherwise
        self._torch = TorchThread('segment_worker')

        p = self._declare_startup_params()
        self.model_path = p['model_path']
        self.device = p['device']
        self.precision = p['precision']
        self.transport = p['image_transport']
        self.camera_names: list[str] = list(p['cameras'] or [])
        self._declare_dynamic_params(p['meta'])
        t0 = time.monotonic()
        try:
            self.pipe, self.backend = self._torch.call(self._load_model, p)
            self.precision = self.pipe.precision   # 'auto' resolved
            self.attention = self.pipe.attention   # measured or pinned (DOVIT_ATTENTION)
        except ModelLoadError as e:
            raise StartupError(f'cannot load model {self.model_path}: {e}') from None
        except (RuntimeError, ValueError, TypeError) as e:
            raise StartupError(f'model {self.model_path} failed to build or run on '
                               f'{self.device} ({self.precision}, backend {p["backend"]}): '
                               f'{type(e).__name__}: {e}') from None
        self.frames = FrameProcessor(self.pipe)   # the batch's forward; cameras count frames
        self.get_logger().info(f'model {self.model_path} loaded and warmed up in '
                               f'{time.monotonic() - t0:.1f} s on {self.device} '
                               f'({self.precision}, {self.backend}, attention '
                               f'{self.attention})')
        self._discovery_s = float(p['qos_discovery_s'])
        self._make_cameras(p['qos_reliability'])
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                              qos.diagnostics_qos())
        # Steady clock: with use_sim_time a paused /clock, or a bag looping in under a second,
        # would otherwise never let a ROS-time timer fire (the stamp stays ROS time).
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        # until stop(); _run catches each batch's errors, and anything else is logged here
        self._torch.submit(self._run).add_done_callback(self._worker_ended)
        inputs = ', '.join(f'{c.input_topic} ({self.transport}, {qos.NAMES[c.reliability]})'
                           for c in self.cameras)
        if self.camera_names:
            self.get_logger().info(
                f'ready: segmenting {len(self.cameras)} cameras as one batch: {inputs}; outputs '
                f'under {self.get_fully_qualified_name()}/<camera>/')
        else:
            self.get_logger().info(f'ready: segmenting {inputs}, outputs under '
                                   f'{self.get_fully_qualified_name()}/')

    def _load_model(self, p: dict):
        """(pipeline, backend used), warmed up; in the torch thread."""
        pipe, backend = make_pipeline(self.model_path, p['backend'], self.device,
                                      self.precision, self.get_logger(), p['input_scale'])
        pipe.warmup()
        return pipe, backend

    # ---------------------------------------------------------------- parameters
    def _declare(self, name: str, default):
        spec = BY_NAME[name]
        try:
            value = self.declare_parameter(name, list(default) if spec.kind is list else default,
                                           descriptor(spec)).value
        except ParameterException as e:
            raise StartupError(f'parameter {name}: {e}') from None
        why = spec.check(value)
        if why:
            raise StartupError(f'parameter {name}: {why}')
        return value

    def _declare_startup_params(self) -> dict:
        v = {s.name: self._declare(s.name, s.default) for s in PARAMETERS if s.read_only}
        if v['threads'] > 0:
            self._torch.call(torch.set_num_threads, v['threads'])
        self.threads = self._torch.call(torch.get_num_threads)
        try:
            v, warnings = resolve_aliases(v)
        except ValueError as e:
            raise StartupError(f'parameters: {e}') from None
        for text in warnings:
            self.get_logger().warning(text)
        try:
            v['device'] = resolve_device(v['device'])
            v['model_path'] = resolve_model_path(v['model'])
            v['meta'] = read_meta(v['model_path'])
        except ModelLoadError as e:
            raise StartupError(f'parameter model={v["model"]!r}: {e}') from None
        except ValueError as e:
            raise StartupError(f'parameter device={v["device"]!r}: {e}') from None
        return v

    def _declare_dynamic_params(self, meta) -> None:
        from_model = model_defaults(meta.exits)
        values = {}
        for name in DYNAMIC:
            default = BY_NAME[name].default
            values[name] = self._declare(name, from_model[name] if default is FROM_MODEL
                                         else default)
        changed = {k: v for k, v in values.items() if from_model.get(k, v) != v
                   or k not in from_model}
        try:  # model.yaml's exits (possibly one xi per decision point) unless overridden
            self._cfg = FrameConfig(exits=meta.exits).updated(changed)
        except ValueError as e:
            raise StartupError(str(e)) from None
        self.add_on_set_parameters_callback(self._validate_params)
        if hasattr(self, 'add_post_set_parameters_callback'):
            self.add_post_set_parameters_callback(self._apply_params)
            self._apply_in_validate = False
        else:  # rclpy before Iron: apply once validated
            self._apply_in_validate = True

    def _validate_params(self, params) -> SetParametersResult:
        changes = {}
        for p in params:
            spec = BY_NAME.get(p.name)
            if spec is None:
                continue   # use_sim_time, qos_overrides.*: rclpy's own
            if spec.read_only:
                return SetParametersResult(successful=False,
                                           reason=f'{p.name} is read-only (set at start-up)')
            why = spec.check(p.value)
            if why:
                return SetParametersResult(successful=False, reason=f'{p.name}: {why}')
            changes[p.name] = p.value
        try:
            new = self.config().updated(changes)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if self._apply_in_validate and changes:
            self._set_config(new, changes)
        return SetParametersResult(successful=True)

    def _apply_params(self, params) -> None:
        changes = {p.name: p.value for p in params if p.name in DYNAMIC}
        if changes:
            self._set_config(self.config().updated(changes), changes)

    def _set_config(self, cfg: FrameConfig, changes: dict) -> None:
        with self._cfg_lock:
            self._cfg = cfg
            if cfg.budget() is None:
                self._budget_was_off = True
        text = ', '.join(f'{k}={v}' for k, v in changes.items())
        self.get_logger().info(f'{text}: applied from the next frame')

    def config(self) -> FrameConfig:
        """The snapshot a frame is processed with (immutable; swapped whole on change)."""
        with self._cfg_lock:
            return self._cfg

    # ---------------------------------------------------------------- topics
    def _make_cameras(self, setting: str) -> None:
        """One Camera per name of `cameras` (one unnamed camera on `image` when empty), each
        with its newest-frame slot."""
        names = self.camera_names or ['']
        self.cameras = [Camera(self, name, self.pipe, self.transport, str(self.device))
                        for name in names]
        self._by_name = {c.name: c for c in self.cameras}
        self.slots = FrameSlots(names, on_drop=lambda name: self._by_name[name].stats.on_dropped())
        deadline = self._t_created + self._discovery_s
        for cam in self.cameras:
            cam.subscribe(setting, deadline, self.slots.put)
        if (rclpy.utilities.get_rmw_implementation_identifier().startswith('rmw_fastrtps')
                and not os.environ.get('FASTDDS_BUILTIN_TRANSPORTS')):
            self.get_logger().info(
                'FASTDDS_BUILTIN_TRANSPORTS is not set: with Fast DDS\'s default transports, '
                'frames over ~0.5 MB from a best-effort publisher in another process mostly get '
                'lost. Export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA for every process (camera, '
                'this node, rviz2), or for none: one side alone breaks discovery.')

    # ---------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            # read per batch, so that a new batch_wait_ms applies from the next batch
            batch = self.slots.take(self.config().batch_wait_ms / 1e3)
            if batch is None or self._stopping:
                return
            try:
                self._process(batch)
            except Exception as e:  # noqa: BLE001 - one bad batch must not end the node
                if self._stopping:
                    return
                for _ in batch:   # the frames of a batch fail together: one forward
                    why = self.failures.failed(e)
                    if why:   # once per run of failures, unthrottled: the node is not serving
                        self.get_logger().error(why)
                self.get_logger().error(f'frame failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=REJECT_LOG_PERIOD_S)
            else:
                self.failures.ok()

    def _frame_exits(self, cfg: FrameConfig) -> ExitConfig:
        """This frame's exit settings: the configured ones, or with xi chosen by the compute
        budget controller when a target is on. Changing target or bounds keeps the current xi
        as the new controller's starting point."""
        budget = cfg.budget()
        if budget is None or self._budget_was_off:
            # a target switched off (even if on again since) restarts from the user's xi
            self._budget_was_off = False
            self._chooser = self._chooser_key = None
        if budget is None:
            return cfg.exits
        key = (budget, cfg.exits.policy, cfg.exits.topk_per_class)
        if self._chooser is None or self._chooser_key != key:
            base = cfg.exits if self._chooser is None else cfg.exits.with_(
                threshold=self._chooser.ctrl.threshold)
            self._chooser, self._chooser_key = BudgetChooser(base, budget), key
        return self._chooser()

    def _process(self, batch: dict[str, tuple[bytes, float]]) -> None:
        """The waiting frames of every camera through one forward; here only messages move."""
        cfg = self.config()   # one consistent configuration for the whole batch
        jobs = [job for job in map(self._job, batch.items()) if job is not None]
        if not jobs:
            return
        exits = self._frame_exits(cfg)
        frames = self.frames.segment_many(
            [j.image for j in jobs], exits, [j.wanted[0] for j in jobs], cfg.overlay_alpha,
            [j.t_received for j in jobs], cfg.overlay_jpeg_quality)
        self.batch_sizes.add(len(jobs))
        latencies = []
        for job, frame in zip(jobs, frames):
            extra = ({'camera': job.camera.name, 'batch size': str(len(jobs))}
                     if self.camera_names else None)
            latencies.append(job.camera.publish(frame, job.header, job.wanted[1], extra))
        self._observe_cost(cfg, [f.result for f in frames], latencies)

    def _job(self, item: tuple[str, tuple[bytes, float]]) -> Job | None:
        """A camera's waiting frame, decoded; None when rejected or nobody wants its outputs."""
        name, (raw, t_received) = item
        cam = self._by_name[name]
        decoded = cam.decode(raw)
        wanted = cam.wanted() if decoded is not None else None
        if wanted is None:
            return None
        msg, image = decoded
        return Job(cam, msg.header, image, wanted, t_received)

    def _observe_cost(self, cfg: FrameConfig, results: list, latencies_ms: list[float]) -> None:
        """Tell the compute budget what the batch cost (its GFLOPs, its slowest latency)."""
        chooser = self._chooser
        if chooser is None:
            return
        over_at_min = chooser.ctrl.over_at_min
        observe_batch(chooser, results, latencies_ms)
        if chooser.ctrl.over_at_min > over_at_min:
            name, value = cfg.budget_target()
            self.get_logger().warning(
                f'{"batch" if self.camera_names else "frame"} over budget ({name}={value:g}) '
                f'even at threshold_min={cfg.threshold_min:g}',
                throttle_duration_sec=REJECT_LOG_PERIOD_S)

    # ---------------------------------------------------------------- shutdown
    def _worker_ended(self, fut) -> None:
        """A worker that ends before stop() has failed outside a batch: say so, loudly."""
        e = fut.exception()
        if e is not None or not self._stopping:
            self.get_logger().fatal(f'the frame worker ended: {e!r}; no more frames are '
                                    'segmented')

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the worker; True when it finished within `timeout` seconds."""
        self._stopping = True
        if self.slots is not None:
            self.slots.close()
        return self._torch.close(timeout)


TEARDOWN_S = 5.0   # a signalled node is gone within this, its DDS teardown finished or not


def exit_if_stuck(seconds: float, code: int, log, exit_fn=os._exit) -> threading.Timer:
    """End the process with `code` unless cancelled within `seconds`: Fast DDS 3.2's TCP
    transport (LARGE_DATA) can deadlock while a participant is deleted
    (TCPChannelResourceBasic::disconnect: seen in the CLI tools, after a failed start, and once
    in CI as a node that did not exit 10 s after SIGINT), and a node that ignores Ctrl-C is
    worse than one that skips the rest of its teardown."""
    def fire():
        log.error(f'ROS teardown did not finish within {seconds:g} s: exiting without it')
        sys.stdout.flush()
        sys.stderr.flush()
        exit_fn(code)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def run(argv: list[str], stop: threading.Event, state: dict) -> tuple[int, bool]:
    """Start the node and spin until `stop` is set; (exit code, worker finished in time).
    `state['spinning']` tells the caller's signal handler whether to interrupt start-up;
    with `state['exit_on_hang']` a teardown stuck past TEARDOWN_S ends the process."""
    # rclpy's own handler only covers SIGINT in some versions; the caller takes both.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger(NODE_NAME)
    node, code, clean = None, 0, True
    try:
        node = SegmentNode()
        state['spinning'] = True
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    except StartupError as e:
        logger.fatal(str(e))
        code = EXIT_STARTUP
        # The half-built node's DDS participant is about a second old: destroying it now can
        # deadlock in Fast DDS's TCP transport destructor (LARGE_DATA; seen in CI, stuck in
        # TCPChannelResourceBasic::disconnect). The process exits right after, so keep the
        # node referenced (through the traceback) and leave the teardown to the exit.
        state['failed'] = e
    finally:
        state['spinning'] = True   # no KeyboardInterrupt while tearing down
        guard = exit_if_stuck(TEARDOWN_S, code, logger) if state.get('exit_on_hang') else None
        if node is not None:
            clean = node.stop()
            node.destroy_node()
        if 'failed' not in state:
            rclpy.try_shutdown()
        if guard is not None:
            guard.cancel()
    return code, clean
