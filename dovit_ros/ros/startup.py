"""What the node builds once at start-up: parameter descriptors from the specs (ros/params.py)
and the pipeline on the chosen backend."""
from __future__ import annotations

from pathlib import Path

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

from ..model import fold_batchnorm
from ..runtime.artifacts import load_model
from ..runtime.input_scale import scaled_size
from ..runtime.pipeline import Pipeline


def descriptor(spec) -> ParameterDescriptor:
    kinds = {str: ParameterType.PARAMETER_STRING, float: ParameterType.PARAMETER_DOUBLE,
             int: ParameterType.PARAMETER_INTEGER, list: ParameterType.PARAMETER_STRING_ARRAY}
    # rclpy types an empty default list as a byte array and would then refuse a string array
    # from the command line: arrays are typed dynamically and checked by spec.check instead.
    d = ParameterDescriptor(name=spec.name, type=kinds[spec.kind], description=spec.description,
                            read_only=spec.read_only, dynamic_typing=spec.kind is list)
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


def make_pipeline(path: Path, backend: str, device: str, precision: str, logger,
                  input_scale: float = 1.0) -> tuple[Pipeline, str]:
    """(pipeline, backend actually used). Without the backend layer: eager PyTorch."""
    model, meta = load_model(path)
    fold_batchnorm(model.eval())   # before any backend builds stages from it (also in Pipeline)
    try:
        from ..runtime.backends import make_runner
    except ImportError as e:
        if backend not in ('auto', 'eager'):
            logger.warning(f'backend {backend!r} asked for, but the backend layer is not '
                           f'available ({e}): running eager PyTorch')
        return Pipeline(model, meta, device, precision, input_scale=input_scale), 'eager'
    # TensorRT engines: built now for the model's own size (fp32), and for any other size the
    # camera sends on its first frame; fp16 engines wait for a real frame to check them on.
    hw = scaled_size(*(meta.input_size or (360, 480)), input_scale)   # the size it sees
    runner, info = make_runner(model, backend, device, precision, image_hw=hw,
                               model_path=path, meta=meta)
    used = str(info.get('backend', backend))
    if info.get('reason'):
        logger.info(f'backend {used}: {info["reason"]}')
    if used == 'tensorrt' and 'engine_precision' not in info:
        logger.info('TensorRT engines are built on the first frame of each image size (cached '
                    'on disk); in fp16 that frame checks their labels against fp32 engines')
    return Pipeline(model, meta, device, precision, runner=runner,
                    input_scale=input_scale), used
