"""The segmentation node's parameters, in one table.

The node declares exactly these (with ParameterDescriptors built from the table), and
test/test_launch.py checks that the launch file and config/segment.yaml name only these. The
module itself imports nothing from ROS so that validation is plain, testable Python.

Read-only parameters configure start-up (model, backend, device, ...). The dynamic ones are
validated by the node's set-parameters callback and applied from the next frame on: each frame
takes one immutable `FrameConfig` snapshot, so a frame never mixes an old xi with a new policy.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..model.config import EXIT_POLICIES, ExitConfig
from ..runtime.budget import THRESHOLD_MIN
from ..runtime.input_scale import SCALE_RANGE
from ..runtime.stats import frame_threshold

FROM_MODEL = None   # default taken from the model's model.yaml at start-up
DEFAULT_THREADS = 1   # measured: scripts/threads_bench.py, docs/benchmarks.md


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: type                      # str, float, int, or list (an array of str)
    default: Any                    # FROM_MODEL: read from model.yaml
    description: str
    read_only: bool = False
    choices: tuple[str, ...] = ()   # str parameters: allowed values ...
    pattern: str | None = None      # ... or a regular expression they must match in full
    low: float | None = None        # numeric parameters: inclusive range
    high: float | None = None
    constraints: str = ''           # shown in the descriptor's additional_constraints

    def check(self, value) -> str | None:
        """Why `value` is not acceptable for this parameter, or None when it is."""
        if self.kind is list:
            return self._check_names(value)
        if self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.kind) and not isinstance(value, bool)
        if not ok:
            return f'expected {self.kind.__name__}, got {type(value).__name__} {value!r}'
        if self.kind is str:
            if self.choices and value not in self.choices:
                return f'{value!r} is not one of {", ".join(self.choices)}'
            if self.pattern and not re.fullmatch(self.pattern, value):
                return f'{value!r} does not match {self.constraints or self.pattern}'
            if not self.choices and not self.pattern and not value.strip():
                return 'must not be empty'
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f'{value!r} is not a finite number'
        if (self.low is not None and value < self.low
                or self.high is not None and value > self.high):
            return f'{value!r} is outside [{self.low:g}, {self.high:g}]'
        return None

    def _check_names(self, value) -> str | None:
        # A string array of distinct names, each matching `pattern` (rclpy hands arrays over
        # as lists; an empty array set on the command line arrives unset, as None).
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f'expected a list of strings, got {type(value).__name__} {value!r}'
        for v in value:
            if self.pattern and not re.fullmatch(self.pattern, v):
                return f'{v!r} does not match {self.constraints or self.pattern}'
        if len(set(value)) != len(value):
            return f'{list(value)!r} names a camera twice'
        return None


# A relative ROS name: tokens of letters, digits and _ (not starting with a digit), joined by /.
RELATIVE_NAME = r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*'

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec('model', str, 'camvid-dovit-tiny', read_only=True,
              description='Model directory, or the name of a model installed under '
                          'share/dovit_ros/models (model.safetensors + model.yaml).'),
    ParamSpec('backend', str, 'auto', read_only=True,
              choices=('auto', 'eager', 'compile', 'tensorrt'),
              description='Inference backend: eager PyTorch, torch.compile or TensorRT; auto '
                          'picks the fastest available one for the device.'),
    ParamSpec('device', str, 'auto', read_only=True, pattern=r'auto|cpu|cuda(:\d+)?',
              constraints='auto, cpu, cuda or cuda:N',
              description='Torch device; auto = cuda when available, else cpu.'),
    ParamSpec('precision', str, 'auto', read_only=True,
              choices=('auto', 'fp32', 'fp16', 'bf16'),
              description='Compute precision of the model; auto = bf16 on a CPU with bf16 '
                          'matrix units (AMX / AVX512-BF16: measured 1.7x faster at the '
                          'same mIoU), else fp32. The diagnostics say which one runs.'),
    ParamSpec('threads', int, DEFAULT_THREADS, read_only=True, low=0, high=1024,
              description='Torch CPU threads of the model (0 = torch default: one per core). '
                          'The default was chosen by scripts/threads_bench.py: with other '
                          'processes busy on the cores, more threads than free cores make '
                          'every frame wait for descheduled threads.'),
    ParamSpec('input_scale', float, 1.0, read_only=True, low=SCALE_RANGE[0],
              high=SCALE_RANGE[1],
              description='Segment each frame resized by this factor; the outputs keep the '
                          'camera\'s resolution. Compute falls with the square of it, in the '
                          'parts token exits cannot shrink too; thin structures lose detail. '
                          'For a CPU that cannot keep up at 1; dovit-eval --input-scale '
                          'measures what a scale costs in accuracy.'),
    ParamSpec('image_transport', str, 'raw', read_only=True, choices=('raw', 'compressed'),
              description='raw: subscribe to `image` (sensor_msgs/Image); compressed: to '
                          '`image/compressed` (sensor_msgs/CompressedImage, JPEG or PNG). '
                          'Named as image_transport names it.'),
    # Empty = not given. Kept so that existing launch and params files still start the node.
    ParamSpec('input_transport', str, '', read_only=True, pattern=r'(raw|compressed)?',
              constraints='raw or compressed (deprecated: use image_transport)',
              description='Deprecated alias of image_transport (a warning is logged when set).'),
    ParamSpec('qos_reliability', str, 'auto', read_only=True,
              choices=('auto', 'reliable', 'best_effort'),
              description='Input subscription reliability. auto: match the publishers seen at '
                          'start-up (reliable only if all are), best effort when there are none '
                          '(it connects to reliable and best-effort publishers alike).'),
    ParamSpec('qos_discovery_s', float, 6.0, read_only=True, low=0.0, high=120.0,
              description='With qos_reliability auto: how long after the node is created it '
                          'looks for the input publishers (model loading included). Fast DDS '
                          'with LARGE_DATA has needed over 6 s on 2 busy cores; raise it on a '
                          'loaded machine.'),
    ParamSpec('cameras', list, [], read_only=True, pattern=RELATIVE_NAME,
              constraints='distinct relative names, e.g. [front, left, right]',
              description='Cameras served by one model: empty = one camera on `image`; with '
                          '[front, left] the node subscribes to front/image and left/image '
                          '(each remappable) and publishes under ~/front/ and ~/left/. The '
                          'waiting frames of all cameras run as one batch.'),
    ParamSpec('threshold', float, FROM_MODEL, low=0.0, high=1.0,
              description='xi: a token leaves the network when its auxiliary-head confidence '
                          'exceeds this; 1.0 disables exits. Default from model.yaml.'),
    ParamSpec('policy', str, FROM_MODEL, choices=EXIT_POLICIES,
              description='Exit policy: none (full model), threshold (DoViT) or dtop (DToP: '
                          'the topk_per_class most confident tokens of each class stay). '
                          'Default from model.yaml.'),
    ParamSpec('topk_per_class', int, FROM_MODEL, low=0, high=100000,
              description='dtop: tokens of each predicted class that stay active although '
                          'confident. Default from model.yaml.'),
    ParamSpec('overlay_alpha', float, 0.5, low=0.0, high=1.0,
              description='Weight of the class colours in ~/overlay (0 = input image only).'),
    ParamSpec('overlay_jpeg_quality', int, 80, low=1, high=100,
              description='JPEG quality of ~/overlay/compressed (computed only while it has a '
                          'subscriber): lower saves bandwidth for remote viewers.'),
    ParamSpec('target_latency_ms', float, 0.0, low=0.0, high=600000.0,
              description='Compute budget: steer xi frame by frame so latency (receipt to '
                          'publication) meets this many ms; diagnostics turn WARN when p95 '
                          'exceeds it. 0 = off. Exclusive with target_gflops.'),
    ParamSpec('target_gflops', float, 0.0, low=0.0, high=1.0e6,
              description='Compute budget: steer xi frame by frame so each frame costs this '
                          'many GFLOPs. 0 = off. Exclusive with target_latency_ms.'),
    ParamSpec('threshold_min', float, THRESHOLD_MIN, low=0.0, high=1.0,
              description='Lowest xi the compute budget may choose.'),
    ParamSpec('threshold_max', float, 1.0, low=0.0, high=1.0,
              description='Highest xi the compute budget may choose.'),
    ParamSpec('batch_wait_ms', float, 0.0, low=0.0, high=10000.0,
              description='Several cameras: once one frame waits, wait up to this long for '
                          'the other cameras\' frames before running the batch. 0 = never '
                          'wait: a slow or silent camera never delays the others.'),
)
BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
DYNAMIC = tuple(p.name for p in PARAMETERS if not p.read_only)
# Declared by rclpy itself on every node; launch files may set them too.
ROS_BUILTIN = ('use_sim_time',)
# Deprecated parameter name -> its current name.
ALIASES = {'input_transport': 'image_transport'}


def resolve_aliases(values: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """`values` with each deprecated alias that was given ('' = not given) folded into its
    current name, and one warning per alias used. ValueError when an alias and its current
    name were both given different values (a current name at its default counts as not
    given: a parameter server cannot tell the two apart)."""
    out, warnings = dict(values), []
    for old, new in ALIASES.items():
        given = out.pop(old, '')
        if given in ('', None):
            continue
        current = out.get(new, BY_NAME[new].default)
        if current != BY_NAME[new].default and current != given:
            raise ValueError(f'{old} (deprecated) is {given!r} but {new} is {current!r}: '
                             f'set only {new}')
        out[new] = given
        warnings.append(f'parameter {old} is deprecated: use {new} (taking {new}={given!r})')
    return out, warnings


def check(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    spec = BY_NAME.get(name)
    if spec is None:
        return f'unknown parameter {name!r}'
    return spec.check(value)


@dataclass(frozen=True)
class FrameConfig:
    """Everything a frame is processed with; replaced whole, never mutated."""
    exits: ExitConfig
    overlay_alpha: float = 0.5
    overlay_jpeg_quality: int = 80
    target_latency_ms: float = 0.0
    target_gflops: float = 0.0
    threshold_min: float = THRESHOLD_MIN
    threshold_max: float = 1.0
    batch_wait_ms: float = 0.0

    def updated(self, changes: Mapping[str, Any]) -> 'FrameConfig':
        """A new config with dynamic parameter values applied (ValueError when invalid)."""
        for name, value in changes.items():
            if name not in DYNAMIC:
                raise ValueError(f'{name!r} is not a dynamic parameter')
            why = check(name, value)
            if why:
                raise ValueError(f'{name}: {why}')
        exit_changes = {k: changes[k] for k in ('policy', 'topk_per_class') if k in changes}
        if 'threshold' in changes:
            exit_changes['threshold'] = float(changes['threshold'])
        exits = self.exits.with_(**exit_changes) if exit_changes else self.exits
        new = replace(self, exits=exits, **{k: float(changes[k]) for k in (
            'overlay_alpha', 'target_latency_ms', 'target_gflops', 'threshold_min',
            'threshold_max', 'batch_wait_ms') if k in changes},
            **{k: int(changes[k]) for k in ('overlay_jpeg_quality',) if k in changes})
        if new.target_gflops and new.target_latency_ms:
            other = 'target_latency_ms' if 'target_gflops' in changes else 'target_gflops'
            raise ValueError('target_gflops and target_latency_ms cannot both be set: set '
                             f'{other} to 0 first')
        if new.threshold_min > new.threshold_max:
            raise ValueError(f'threshold_min {new.threshold_min:g} is above threshold_max '
                             f'{new.threshold_max:g}')
        if 'threshold' in changes and new.budget_target():
            name, value = new.budget_target()
            raise ValueError(f'threshold is steered by the compute budget ({name}={value:g}); '
                             f'set {name} to 0 to choose threshold by hand')
        return new

    def budget_target(self) -> tuple[str, float] | None:
        """(parameter, value) of the active compute-budget target, if any."""
        if self.target_gflops:
            return 'target_gflops', self.target_gflops
        if self.target_latency_ms:
            return 'target_latency_ms', self.target_latency_ms
        return None

    def budget(self):
        """BudgetConfig of the active target (None when off)."""
        from ..runtime.budget import budget_from
        return budget_from(self.target_gflops, self.target_latency_ms, self.threshold_min,
                           self.threshold_max)

    @property
    def threshold(self) -> float:
        return frame_threshold(self.exits)


def model_defaults(exits: ExitConfig) -> dict[str, Any]:
    """Values of the FROM_MODEL parameters for a model's default exit settings."""
    t = exits.threshold
    return {'threshold': min(1.0, float(max(t) if isinstance(t, (list, tuple)) else t)),
            'policy': exits.policy, 'topk_per_class': int(exits.topk_per_class)}
