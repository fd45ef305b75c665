"""Image messages <-> numpy arrays, shared by the live node and the offline bag tools.

Duck-typed on the message fields (raw: height, width, encoding, is_bigendian, step, data;
compressed: format, data), so rclpy's sensor_msgs and rosbags' dataclasses both work and this
module imports nothing from ROS. Every header field is validated before `data` is touched, so a
message announcing 100000x100000 pixels is rejected without allocating anything.
"""
from __future__ import annotations

import array
import operator

import cv2
import numpy as np

UNSUPPORTED_ENCODING = 'unsupported_encoding'
ZERO_SIZE = 'zero_size'
TOO_LARGE = 'too_large'
BAD_STEP = 'bad_step'
DATA_SIZE_MISMATCH = 'data_size_mismatch'
UNDECODABLE = 'undecodable'
BAD_TYPE = 'bad_type'
REJECT_REASONS = (UNSUPPORTED_ENCODING, ZERO_SIZE, TOO_LARGE, BAD_STEP, DATA_SIZE_MISMATCH,
                  UNDECODABLE, BAD_TYPE)

DEFAULT_MAX_PIXELS = 4096 * 4096

# encoding -> (bytes per pixel, cv2 conversion to RGB or None for special handling).
# OpenCV names a Bayer pattern after the 2nd and 3rd pixels of its 2nd row, ROS after the
# top-left 2x2 block read row-major, so ROS rggb (2nd row "G B G B") is OpenCV's BayerBG.
_RAW = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    '8UC3': (3, cv2.COLOR_BGR2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    '8UC4': (4, cv2.COLOR_BGRA2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    '8UC1': (1, cv2.COLOR_GRAY2RGB),
    'mono16': (2, None),
    'bayer_rggb8': (1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (1, cv2.COLOR_BayerGB2RGB),
}
RAW_ENCODINGS = tuple(_RAW)

# Output encodings: (dtype with explicit little-endian byte order, ndim, channels).
_OUT = {
    'mono8': (np.dtype(np.uint8), 2, 1),
    'rgb8': (np.dtype(np.uint8), 3, 3),
    'mono16': (np.dtype('<u2'), 2, 1),
    '32FC1': (np.dtype('<f4'), 2, 1),
}
OUTPUT_ENCODINGS = tuple(_OUT)


class FrameRejected(ValueError):
    """A frame that cannot be decoded; `reason` is a stable diagnostics counter key."""

    def __init__(self, reason: str, message: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f'unknown reject reason {reason!r}')
        super().__init__(f'{message} [{reason}]')
        self.reason = reason
        self.message = message

    def __reduce__(self):  # picklable across worker processes despite the 2-argument init
        return type(self), (self.reason, self.message)


def _int_field(msg, name: str) -> int:
    try:
        return operator.index(getattr(msg, name))
    except (AttributeError, TypeError):
        raise FrameRejected(BAD_TYPE, f'image field {name!r} missing or not an integer') from None


def _payload(data) -> tuple[object, int]:
    """(buffer or list, length in bytes) without copying or reading the bytes."""
    if isinstance(data, (list, tuple)):  # rclpy with a list assigned and field checks off
        return data, len(data)
    if isinstance(data, np.ndarray) and data.dtype != np.uint8:
        raise FrameRejected(BAD_TYPE, f'image data must be uint8, got {data.dtype}')
    try:
        view = memoryview(data)
    except TypeError:
        raise FrameRejected(BAD_TYPE, f'image data of type {type(data).__name__} is not '
                            'bytes-like') from None
    return view, view.nbytes


def _as_uint8(payload) -> np.ndarray:
    if isinstance(payload, memoryview):
        return np.frombuffer(payload if payload.c_contiguous else payload.tobytes(), np.uint8)
    try:
        return np.asarray(payload, dtype=np.uint8)
    except (OverflowError, ValueError, TypeError):
        raise FrameRejected(BAD_TYPE, 'image data list holds values outside 0..255') from None


def decode_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8 RGB (C-contiguous) from a raw sensor_msgs/Image-like message.

    The result may be a (possibly read-only) view of `msg.data` when no conversion is needed
    (unpadded rgb8); copy it before modifying in place.
    """
    height, width = _int_field(msg, 'height'), _int_field(msg, 'width')
    step = _int_field(msg, 'step')
    if height <= 0 or width <= 0:
        raise FrameRejected(ZERO_SIZE, f'image is {width}x{height}')
    if width * height > max_pixels:
        raise FrameRejected(TOO_LARGE, f'image is {width}x{height}, more than {max_pixels} '
                            'pixels')
    encoding = getattr(msg, 'encoding', None)
    if not isinstance(encoding, str):
        raise FrameRejected(BAD_TYPE, 'image field \'encoding\' missing or not a string')
    if encoding not in _RAW:
        raise FrameRejected(UNSUPPORTED_ENCODING, f'encoding {encoding!r} not in '
                            f'{", ".join(RAW_ENCODINGS)}')
    bpp, code = _RAW[encoding]
    row = width * bpp
    if step < row:
        raise FrameRejected(BAD_STEP, f'step {step} < width {width} * {bpp} bytes ({encoding})')
    payload, size = _payload(getattr(msg, 'data', None))
    if size != step * height:
        raise FrameRejected(DATA_SIZE_MISMATCH, f'data has {size} bytes, step {step} * height '
                            f'{height} = {step * height}')

    rows = _as_uint8(payload).reshape(height, step)[:, :row]  # (H, W*bpp) view, maybe strided
    if encoding == 'mono16':
        # >> 8 is the most significant byte: the first in big-endian, the second in little.
        hi = rows.reshape(height, width, 2)[:, :, 0 if getattr(msg, 'is_bigendian', 0) else 1]
        return np.repeat(hi[:, :, None], 3, axis=2)  # (H, W, 3), contiguous
    if code is None:  # rgb8
        return np.ascontiguousarray(rows.reshape(height, width, 3))
    # OpenCV takes a strided (padded-row) view as is and always returns a fresh array.
    src = rows if bpp == 1 else rows.reshape(height, width, bpp)
    return cv2.cvtColor(src, code)


def _header_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, or None when not cheaply known."""
    head = buf[:24].tobytes()
    if head.startswith(b'\x89PNG\r\n\x1a\n') and head[12:16] == b'IHDR':
        return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    if not head.startswith(b'\xff\xd8'):
        return None
    i, n = 2, len(buf)
    while i + 9 <= n and buf[i] == 0xFF:
        marker = int(buf[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            height = (int(buf[i + 5]) << 8) | int(buf[i + 6])
            return (int(buf[i + 7]) << 8) | int(buf[i + 8]), height
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
            return None
        i += 2 + ((int(buf[i + 2]) << 8) | int(buf[i + 3]))
    return None


def decode_compressed(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8 RGB from a sensor_msgs/CompressedImage-like message (jpeg, png, ...).

    The format string is only screened: image_transport always compresses colour as bgr8
    (e.g. 'rgb8; jpeg compressed bgr8'), and the payload's own magic bytes say how to decode.
    """
    fmt = getattr(msg, 'format', None)
    if not isinstance(fmt, str):
        raise FrameRejected(BAD_TYPE, 'compressed image field \'format\' missing or not a string')
    if 'compresseddepth' in fmt.lower():
        raise FrameRejected(UNSUPPORTED_ENCODING, f'compressed format {fmt!r} is a depth image')
    payload, size = _payload(getattr(msg, 'data', None))
    if size == 0:
        raise FrameRejected(UNDECODABLE, f'empty {fmt!r} payload')
    buf = _as_uint8(payload)
    dims = _header_size(buf)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise FrameRejected(TOO_LARGE, f'{fmt!r} header announces {dims[0]}x{dims[1]}, more '
                            f'than {max_pixels} pixels')
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # also expands grey, reduces 16-bit to 8
    except cv2.error:
        bgr = None
    if bgr is None or bgr.size == 0:
        raise FrameRejected(UNDECODABLE, f'{size}-byte {fmt!r} payload could not be decoded')
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise FrameRejected(TOO_LARGE, f'decoded {fmt!r} image is {bgr.shape[1]}x'
                            f'{bgr.shape[0]}, more than {max_pixels} pixels')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_any(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """decode_compressed if `msg` has a `format` field, decode_image if it has `encoding`."""
    if hasattr(msg, 'format'):
        return decode_compressed(msg, max_pixels)
    if hasattr(msg, 'encoding'):
        return decode_image(msg, max_pixels)
    raise FrameRejected(BAD_TYPE, f'{type(msg).__name__} is neither an Image nor a '
                        'CompressedImage')


def image_fields(image: np.ndarray, encoding: str, as_numpy: bool = False) -> dict:
    """Fields of a sensor_msgs/Image holding `image`: Image(**image_fields(...)).

    `data` is always a fresh copy in little-endian order. as_numpy=False gives array.array('B'),
    which rclpy's Image.data setter stores as is; bytes and lists are re-checked element-wise
    and copied. Measured for 2048x1024x3 (setter + conversion): array.array ~0.2-0.4 ms, bytes
    ~0.4 ms but ~400 ms with ROS_PYTHON_CHECK_FIELDS=1, list ~140 ms. as_numpy=True gives the
    1-D uint8 array that rosbags' dataclasses expect.
    """
    if encoding not in _OUT:
        raise ValueError(f'output encoding {encoding!r} not in {", ".join(OUTPUT_ENCODINGS)}')
    dtype, ndim, channels = _OUT[encoding]
    if not isinstance(image, np.ndarray):
        raise ValueError(f'{encoding} image must be a numpy array, got {type(image).__name__}')
    shape_ok = image.ndim == ndim and (ndim == 2 or image.shape[2] == channels)
    if not shape_ok or image.dtype.newbyteorder('<') != dtype.newbyteorder('<'):
        want = 'H x W' if ndim == 2 else f'H x W x {channels}'
        raise ValueError(f'{encoding} image must be {want} {dtype.name}, got '
                         f'{"x".join(map(str, image.shape))} {image.dtype}')
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f'{encoding} image is empty ({width}x{height})')
    if as_numpy:
        data = np.array(image, dtype=dtype, order='C', copy=True).reshape(-1).view(np.uint8)
    else:
        data = array.array('B')
        data.frombytes(np.ascontiguousarray(image, dtype=dtype).reshape(-1).view(np.uint8))
    return dict(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * channels * dtype.itemsize, data=data)


def encode_compressed(image_rgb: np.ndarray, fmt: str = 'jpeg',
                      quality: int = 90) -> tuple[str, bytes]:
    """(format, payload) of a CompressedImage for an H x W x 3 uint8 RGB image.

    The format string follows image_transport ('rgb8; jpeg compressed bgr8'); `quality`
    (1..100) applies to JPEG only.
    """
    kind = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}.get(fmt.lower())
    if kind is None:
        raise ValueError(f'compressed format {fmt!r} not in jpeg, png')
    if not (isinstance(image_rgb, np.ndarray) and image_rgb.dtype == np.uint8
            and image_rgb.ndim == 3 and image_rgb.shape[2] == 3 and image_rgb.size):
        shape = getattr(image_rgb, 'shape', None)
        raise ValueError(f'image to compress must be non-empty H x W x 3 uint8 RGB, got {shape}')
    if kind == 'jpeg' and not 1 <= quality <= 100:
        raise ValueError(f'JPEG quality must be in 1..100, got {quality}')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == 'jpeg' else []
    ok, buf = cv2.imencode('.jpg' if kind == 'jpeg' else '.png',
                           cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {image_rgb.shape} image as {kind}')
    return f'rgb8; {kind} compressed bgr8', buf.tobytes()
