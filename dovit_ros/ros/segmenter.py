"""The segmentation node itself (rclpy): parameters, topics, the worker thread, diagnostics.

`dovit_ros.ros.node` is the light entry point that imports this module once its signal
handlers are in place; see its docstring for the threading model.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from ..model import ExitConfig
from ..runtime.artifacts import ModelLoadError, load_model, read_meta
from ..runtime.budget import BudgetChooser
from ..runtime.compressed import OVERLAY_COMPRESSED
from ..runtime.failures import FrameFailures
from ..runtime.frame import FrameProcessor
from ..runtime.image_codec import FrameRejected
from ..runtime.outputs import FRAME_STATS, IMAGE_OUTPUTS
from ..runtime.pipeline import Pipeline, resolve_device, resolve_model_path
from ..runtime.stats import ComputeStats
from . import qos
from .camera_info import CameraInfoRelay
from .names import EXIT_STARTUP, NODE_NAME
from .params import (BY_NAME, DYNAMIC, FROM_MODEL, PARAMETERS, FrameConfig, model_defaults,
                     resolve_aliases)

REJECT_LOG_PERIOD_S = 5.0
# qos_reliability:=auto looks for publishers until this long after the node was created
# (mostly spent loading the model); Fast DDS with LARGE_DATA needs ~1 s on an idle machine
# and, seen in a full test run on 2 busy cores, more than 3 s.
DISCOVERY_WAIT_S = 6.0


class StartupError(RuntimeError):
    """The node cannot start: bad parameter, missing/corrupt/incompatible model, no device."""


def descriptor(spec) -> ParameterDescriptor:
    kinds = {str: ParameterType.PARAMETER_STRING, float: ParameterType.PARAMETER_DOUBLE,
             int: ParameterType.PARAMETER_INTEGER}
    d = ParameterDescriptor(name=spec.name, type=kinds[spec.kind], description=spec.description,
                            read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    elif spec.constraints:
        d.additional_constraints = spec.constraints
    if spec.kind is float and spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                     to_value=float(spec.high), step=0.0)]
    if spec.kind is int and spec.low is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                        step=1)]
    return d


def make_pipeline(path: Path, backend: str, device: str, precision: str, logger
                  ) -> tuple[Pipeline, str]:
    """(pipeline, backend actually used). Without the backend layer: eager PyTorch."""
    model, meta = load_model(path)
    try:
        from ..runtime.backends import make_runner
    except ImportError as e:
        if backend not in ('auto', 'eager'):
            logger.warning(f'backend {backend!r} asked for, but the backend layer is not '
                           f'available ({e}): running eager PyTorch')
        return Pipeline(model, meta, device, precision), 'eager'
    # TensorRT engines: built now for the model's own size (fp32), and for any other size the
    # camera sends on its first frame; fp16 engines wait for a real frame to check them on.
    hw = tuple(meta.input_size or (360, 480))
    runner, info = make_runner(model, backend, device, precision, image_hw=hw,
                               model_path=path, meta=meta)
    used = str(info.get('backend', backend))
    if info.get('reason'):
        logger.info(f'backend {used}: {info["reason"]}')
    if used == 'tensorrt' and 'engine_precision' not in info:
        logger.info('TensorRT engines are built on the first frame of each image size (cached '
                    'on disk); in fp16 that frame checks their labels against fp32 engines')
    return Pipeline(model, meta, device, precision, runner=runner), used


class SegmentNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._t_created = time.monotonic()
        self.stats = ComputeStats()
        self._cond = threading.Condition()
        self._slot: tuple[bytes, float] | None = None
        self._stopping = False
        self._cfg_lock = threading.Lock()
        self._idle = 0      # frames not segmented because no output had a subscriber
        self.failures = FrameFailures()   # frames whose processing raised (worker only)
        self._jpeg = 0      # ~/overlay/compressed frames encoded (only while subscribed)
        self._reject_logs: dict[str, object] = {}
        self._chooser: BudgetChooser | None = None   # worker thread only
        self._chooser_key = None
        self._budget_was_off = False   # set by parameter updates, read by the worker
        self._worker: threading.Thread | None = None

        p = self._declare_startup_params()
        self.model_path = p['model_path']
        self.device = p['device']
        self.precision = p['precision']
        self.transport = p['image_transport']
        self._declare_dynamic_params(p['meta'])
        t0 = time.monotonic()
        try:
            self.pipe, self.backend = make_pipeline(self.model_path, p['backend'], self.device,
                                                    self.precision, self.get_logger())
            self.pipe.warmup()
        except ModelLoadError as e:
            raise StartupError(f'cannot load model {self.model_path}: {e}') from None
        except (RuntimeError, ValueError, TypeError) as e:
            raise StartupError(f'model {self.model_path} failed to build or run on '
                               f'{self.device} ({self.precision}, backend {p["backend"]}): '
                               f'{type(e).__name__}: {e}') from None
        self.frames = FrameProcessor(self.pipe, self.stats)
        self.get_logger().info(f'model {self.model_path} loaded and warmed up in '
                               f'{time.monotonic() - t0:.1f} s on {self.device} '
                               f'({self.precision}, {self.backend})')
        self._make_publishers()
        self._make_subscription(p['qos_reliability'])
        # Steady clock: with use_sim_time a paused /clock, or a bag looping in under a second,
        # would otherwise never let a ROS-time timer fire (the stamp stays ROS time).
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._worker = threading.Thread(target=self._run, name='segment_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'ready: segmenting {self.input_topic} ({self.transport}, '
            f'{qos.NAMES[self.input_reliability]}), outputs under '
            f'{self.get_fully_qualified_name()}/')

    # ---------------------------------------------------------------- parameters
    def _declare(self, name: str, default):
        spec = BY_NAME[name]
        try:
            value = self.declare_parameter(name, default, descriptor(spec)).value
        except ParameterException as e:
            raise StartupError(f'parameter {name}: {e}') from None
        why = spec.check(value)
        if why:
            raise StartupError(f'parameter {name}: {why}')
        return value

    def _declare_startup_params(self) -> dict:
        v = {s.name: self._declare(s.name, s.default) for s in PARAMETERS if s.read_only}
        if v['threads'] > 0:
            torch.set_num_threads(v['threads'])
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
    def _make_publishers(self) -> None:
        # qos_overrides./dovit_segmenter/<output>.publisher.<policy> parameters, as for the
        # input. rclpy writes an override into the profile object it is given: one fresh
        # profile per publisher, or labels' override would leak into every later output.
        def output(msg_type, name):
            return self.create_publisher(
                msg_type, f'~/{name}', qos.output_qos(),
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.image_pubs = {name: output(Image, name) for name in IMAGE_OUTPUTS}
        self.jpeg_pub = output(CompressedImage, OVERLAY_COMPRESSED)
        self.stats_pub = output(DiagnosticArray, FRAME_STATS)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                              qos.diagnostics_qos())

    def _input_topic(self) -> str:
        base = self.resolve_topic_name('image')
        if self.transport == 'raw':
            return base
        # image_transport's convention: remapping `image` moves `image/compressed` with it,
        # unless `image/compressed` itself is remapped.
        own = self.resolve_topic_name('image/compressed')
        unmapped = self.resolve_topic_name('image/compressed', only_expand=True)
        return own if own != unmapped else base.rstrip('/') + '/compressed'

    def _make_subscription(self, setting: str) -> None:
        self.input_topic = self._input_topic()
        # beside `image` (before a /compressed suffix), as image_transport's CameraSubscriber
        self.camera_info = CameraInfoRelay(self, self.resolve_topic_name('image'),
                                           qos.output_qos())
        self._msg_type = Image if self.transport == 'raw' else CompressedImage
        pubs = []
        if setting == 'auto':  # give discovery a moment to report publishers already up
            deadline = self._t_created + DISCOVERY_WAIT_S
            while True:
                pubs = self.get_publishers_info_by_topic(self.input_topic)
                if pubs or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        reliability, why = qos.choose_reliability(setting,
                                                  [p.qos_profile.reliability for p in pubs])
        self.input_reliability = reliability
        self.get_logger().info(f'input {self.input_topic} ({self._msg_type.__name__}): '
                               f'{qos.NAMES[reliability]} QoS, {why}')
        if (rclpy.utilities.get_rmw_implementation_identifier().startswith('rmw_fastrtps')
                and not os.environ.get('FASTDDS_BUILTIN_TRANSPORTS')):
            self.get_logger().info(
                'FASTDDS_BUILTIN_TRANSPORTS is not set: with Fast DDS\'s default transports, '
                'frames over ~0.5 MB from a best-effort publisher in another process mostly get '
                'lost. Export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA for every process (camera, '
                'this node, rviz2), or for none: one side alone breaks discovery.')
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self.image_sub = self.create_subscription(
            self._msg_type, self.input_topic, self._on_image, qos.input_qos(reliability),
            raw=True, event_callbacks=events,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())

    def _on_incompatible_qos(self, event) -> None:
        self.get_logger().warning(
            f'a publisher on {self.input_topic} has QoS incompatible with this '
            f'{qos.NAMES[self.input_reliability]} subscription (policy '
            f'{event.last_policy_kind}); its frames are not received. Restart with '
            '-p qos_reliability:=best_effort to accept every publisher.',
            throttle_duration_sec=REJECT_LOG_PERIOD_S)

    def _on_image(self, raw: bytes) -> None:
        """Subscription callback: no decoding here, just keep the newest frame."""
        t = time.monotonic()
        self.stats.on_received(t)
        with self._cond:
            if self._slot is not None:
                self.stats.on_dropped()
            self._slot = (raw, t)
            self._cond.notify()

    # ---------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                raw, t_received = self._slot
                self._slot = None
            try:
                self._process(raw, t_received)
            except Exception as e:  # noqa: BLE001 - one bad frame must not end the node
                if self._stopping:
                    return
                why = self.failures.failed(e)
                if why:   # once per run of failures, unthrottled: the node is not serving
                    self.get_logger().error(why)
                self.get_logger().error(f'frame failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=REJECT_LOG_PERIOD_S)
            else:
                self.failures.ok()

    def _reject_logger(self, reason: str):
        # One logger object per reason: rclpy throttles per logger and call site, so each
        # reason gets its own warning every REJECT_LOG_PERIOD_S.
        if reason not in self._reject_logs:
            self._reject_logs[reason] = self.get_logger().get_child('input')
        return self._reject_logs[reason]

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

    def _process(self, raw: bytes, t_received: float) -> None:
        """One frame through the shared frame processor; here only messages move."""
        cfg = self.config()   # one consistent configuration for the whole frame
        msg = deserialize_message(raw, self._msg_type)
        try:
            image = self.frames.decode(msg)
        except FrameRejected as e:
            self._reject_logger(e.reason).warning(
                f'rejected a frame on {self.input_topic}: {e.message} [{e.reason}]',
                throttle_duration_sec=REJECT_LOG_PERIOD_S)
            return
        wanted = {n for n, pub in self.image_pubs.items() if pub.get_subscription_count()}
        want_stats = self.stats_pub.get_subscription_count() > 0
        want_jpeg = self.jpeg_pub.get_subscription_count() > 0
        if not wanted and not want_stats and not want_jpeg:
            self._idle += 1
            return
        exits = self._frame_exits(cfg)
        if want_jpeg:
            wanted.add(OVERLAY_COMPRESSED)
        frame = self.frames.segment(image, exits, wanted, cfg.overlay_alpha, t_received,
                                    cfg.overlay_jpeg_quality)
        for name, f in frame.fields.items():
            self.image_pubs[name].publish(Image(header=msg.header, **f))
        if frame.jpeg is not None:
            self.jpeg_pub.publish(CompressedImage(header=msg.header, **frame.jpeg))
            self._jpeg += 1
        self.camera_info.publish(msg.header)
        chooser = self._chooser
        over_at_min = chooser.ctrl.over_at_min if chooser else 0
        latency_ms = self.frames.finish(frame, time.monotonic(), chooser)
        if chooser is not None and chooser.ctrl.over_at_min > over_at_min:
            name, value = cfg.budget_target()
            self.get_logger().warning(
                f'frame over budget ({name}={value:g}) even at threshold_min='
                f'{cfg.threshold_min:g}', throttle_duration_sec=REJECT_LOG_PERIOD_S)
        if want_stats:
            message, kv = self.frames.stats_message(frame, latency_ms)
            status = DiagnosticStatus(
                level=DiagnosticStatus.OK, name=f'{self.get_name()}: frame', message=message,
                hardware_id=str(self.device),
                values=[KeyValue(key=k, value=v) for k, v in kv.items()])
            self.stats_pub.publish(DiagnosticArray(header=msg.header, status=[status]))

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        cfg = self.config()
        extra = {
            'model': self.model_path, 'backend': self.backend, 'device': self.device,
            'precision': self.precision, 'threads': torch.get_num_threads(),
            'input topic': self.input_topic,
            'input transport': self.transport,
            'camera_info': self.camera_info.status(),
            'overlay jpeg frames': self._jpeg,
            'input reliability': qos.NAMES[self.input_reliability],
            'frames idle (no subscribers)': self._idle, **self.failures.report(),
            'configured threshold': f'{cfg.threshold:.4f}',
            'configured policy': cfg.exits.policy,
            'configured topk per class': cfg.exits.topk_per_class,
            'target latency ms': f'{cfg.target_latency_ms:g}',
            'target gflops': f'{cfg.target_gflops:g}',
        }
        chooser = self._chooser
        if chooser is not None:
            extra.update(chooser.report())
        level, message, kv = self.stats.report(cfg.target_latency_ms, extra)
        if self._idle and not self.stats.frames_out:
            message = 'no subscriber to any output: frames are not segmented'
        if self.failures.stuck:
            level, message = DiagnosticStatus.ERROR[0], self.failures.message()
        status = DiagnosticStatus(level=bytes([level]), name=f'{self.get_name()}: compute budget',
                                  message=message, hardware_id=str(self.device),
                                  values=[KeyValue(key=k, value=v) for k, v in kv.items()])
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array_msg)

    # ---------------------------------------------------------------- shutdown
    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the worker; True when it finished within `timeout` seconds."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is None:
            return True
        self._worker.join(timeout)
        return not self._worker.is_alive()


def run(argv: list[str], stop: threading.Event, state: dict) -> tuple[int, bool]:
    """Start the node and spin until `stop` is set; (exit code, worker finished in time).
    `state['spinning']` tells the caller's signal handler whether to interrupt start-up."""
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
        if node is not None:
            clean = node.stop()
            node.destroy_node()
        if 'failed' not in state:
            rclpy.try_shutdown()
    return code, clean
