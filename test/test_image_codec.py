"""dovit_ros.runtime.image_codec: raw/compressed image messages <-> RGB arrays."""
import array
import itertools
import pickle
import subprocess
import sys
import tracemalloc
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dovit_ros.runtime import image_codec as ic
from dovit_ros.runtime.image_codec import FrameRejected

H, W = 6, 8
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
MONO16 = RNG.integers(0, 1 << 16, (H, W), dtype=np.uint16)
MONO16[0, :4] = [0x1234, 0xFF00, 0x00FF, 0xABCD]  # high bytes 0x12, 0xFF, 0x00, 0xAB


def grey3(g):
    return np.repeat(g[:, :, None], 3, axis=2)


# encoding -> (pixel bytes per row (H, W * bpp) uint8, is_bigendian, expected RGB output)
CASES = {
    'rgb8': (RGB.reshape(H, -1), 0, RGB),
    'bgr8': (RGB[:, :, ::-1].reshape(H, -1), 0, RGB),
    '8UC3': (RGB[:, :, ::-1].reshape(H, -1), 0, RGB),
    'rgba8': (np.concatenate([RGB, ALPHA], 2).reshape(H, -1), 0, RGB),
    'bgra8': (np.concatenate([RGB[:, :, ::-1], ALPHA], 2).reshape(H, -1), 0, RGB),
    '8UC4': (np.concatenate([RGB[:, :, ::-1], ALPHA], 2).reshape(H, -1), 0, RGB),
    'mono8': (GRAY, 0, grey3(GRAY)),
    '8UC1': (GRAY, 0, grey3(GRAY)),
    'mono16': (MONO16.astype('<u2').view(np.uint8), 0, grey3((MONO16 >> 8).astype(np.uint8))),
    'mono16_be': (MONO16.astype('>u2').view(np.uint8), 1,
                  grey3((MONO16 >> 8).astype(np.uint8))),
}


def raw_msg(encoding, rows, pad=0, bigendian=0, container=bytes):
    """Duck-typed Image with `pad` junk bytes after each row."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    junk = np.full((rows.shape[0], pad), 0xEE, np.uint8)
    buf = np.concatenate([rows, junk], 1)
    flat = buf.reshape(-1)
    data = {bytes: flat.tobytes(), bytearray: bytearray(flat.tobytes()),
            array.array: array.array('B', flat.tobytes()), memoryview: memoryview(flat.tobytes()),
            np.ndarray: flat.copy(), list: flat.tolist()}[container]
    return SimpleNamespace(height=rows.shape[0], width=rows.shape[1] // ic._RAW[encoding][0],
                           encoding=encoding, is_bigendian=bigendian, step=buf.shape[1],
                           data=data)


def case_msg(name, pad=0, container=bytes):
    rows, big, _ = CASES[name]
    return raw_msg(name.replace('_be', ''), rows, pad, big, container)


def rejected(fn, *args, **kw):
    with pytest.raises(FrameRejected) as exc:
        fn(*args, **kw)
    assert exc.value.reason in ic.REJECT_REASONS
    return exc.value.reason


@pytest.mark.parametrize('pad', [0, 5])
@pytest.mark.parametrize('name', sorted(CASES))
def test_raw_round_trip(name, pad):
    out = ic.decode_image(case_msg(name, pad))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, CASES[name][2])


def test_channel_order_and_mono16_bytes_explicit():
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 200
    assert ic.decode_image(raw_msg('bgr8', red[..., ::-1].reshape(1, 3)))[0, 0].tolist() == \
        [200, 0, 0]
    assert ic.decode_image(raw_msg('rgb8', red.reshape(1, 3)))[0, 0].tolist() == [200, 0, 0]
    vals = np.array([[0x1234, 0xFF00, 0x00FF, 0xABCD]], np.uint16)
    for order, big in (('<u2', 0), ('>u2', 1)):
        out = ic.decode_image(raw_msg('mono16', vals.astype(order).view(np.uint8), 3, big))
        assert out[0, :, 0].tolist() == [0x12, 0xFF, 0x00, 0xAB]


@pytest.mark.parametrize('container', [bytes, bytearray, array.array, memoryview, np.ndarray,
                                       list])
def test_data_containers(container):
    out = ic.decode_image(case_msg('bgr8', pad=3, container=container))
    np.testing.assert_array_equal(out, RGB)


def test_unpadded_rgb8_is_not_copied():
    msg = case_msg('rgb8', container=np.ndarray)
    assert np.shares_memory(ic.decode_image(msg), msg.data)


BAYER = {'bayer_rggb8': 'RGGB', 'bayer_bggr8': 'BGGR', 'bayer_gbrg8': 'GBRG',
         'bayer_grbg8': 'GRBG'}


@pytest.mark.parametrize('pad', [0, 4])
@pytest.mark.parametrize('encoding', sorted(BAYER))
def test_bayer_flat_colour(encoding, pad):
    colour = {'R': 220, 'G': 120, 'B': 20}  # all different: any wrong pattern changes output
    mosaic = np.zeros((8, 10), np.uint8)
    for k, ch in enumerate(BAYER[encoding]):  # top-left 2x2 block, row-major
        mosaic[k // 2::2, k % 2::2] = colour[ch]
    out = ic.decode_image(raw_msg(encoding, mosaic, pad))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    inner = out[2:-2, 2:-2].reshape(-1, 3).astype(int)
    assert np.abs(inner - [220, 120, 20]).max() <= 2
    assert (out.reshape(-1, 3).argmax(1) == 0).all()  # red dominates everywhere


def test_rclpy_messages():
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    for check in (False, True):
        msg = Image(check_fields=check, **ic.image_fields(RGB, 'rgb8'))
        back = deserialize_message(serialize_message(msg), Image)
        np.testing.assert_array_equal(ic.decode_image(back), RGB)
        np.testing.assert_array_equal(ic.decode_any(back), RGB)
    rows, _, want = CASES['bgra8']
    padded = case_msg('bgra8', pad=2, container=array.array)
    msg = Image(height=H, width=W, encoding='bgra8', step=padded.step, data=padded.data)
    np.testing.assert_array_equal(ic.decode_image(msg), want)
    fmt, payload = ic.encode_compressed(RGB, 'png')
    cmsg = CompressedImage(format=fmt, data=array.array('B', payload))
    np.testing.assert_array_equal(ic.decode_any(cmsg), RGB)


@pytest.fixture(scope='module')
def typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


def test_rosbags_messages(typestore):
    types = typestore.types
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='cam')
    image_t, comp_t = types['sensor_msgs/msg/Image'], types['sensor_msgs/msg/CompressedImage']
    fields = ic.image_fields(RGB, 'rgb8', as_numpy=True)
    assert isinstance(fields['data'], np.ndarray) and fields['data'].dtype == np.uint8
    assert fields['data'].ndim == 1
    raw = typestore.serialize_cdr(image_t(header=header, **fields), image_t.__msgtype__)
    back = typestore.deserialize_cdr(raw, image_t.__msgtype__)
    np.testing.assert_array_equal(ic.decode_any(back), RGB)
    fmt, payload = ic.encode_compressed(RGB, 'png')
    comp = comp_t(header=header, format=fmt, data=np.frombuffer(payload, np.uint8))
    raw = typestore.serialize_cdr(comp, comp_t.__msgtype__)
    back = typestore.deserialize_cdr(raw, comp_t.__msgtype__)
    np.testing.assert_array_equal(ic.decode_any(back), RGB)


def test_default_empty_rosbags_and_rclpy_images_rejected(typestore):
    from sensor_msgs.msg import Image
    assert rejected(ic.decode_image, Image()) == 'zero_size'
    assert rejected(ic.decode_any, Image()) == 'zero_size'


def _msg(**changes):
    msg = case_msg('rgb8')
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


GOOD = case_msg('rgb8')
REJECTIONS = {
    'unknown_encoding': (_msg(encoding='yuv422'), 'unsupported_encoding'),
    'depth_encoding': (_msg(encoding='16UC1'), 'unsupported_encoding'),
    'empty_encoding': (_msg(encoding=''), 'unsupported_encoding'),
    'zero_width': (_msg(width=0), 'zero_size'),
    'zero_height': (_msg(height=0, data=b''), 'zero_size'),
    'too_large': (_msg(width=5000, height=5000), 'too_large'),
    'step_below_row': (_msg(step=W * 3 - 1), 'bad_step'),
    'step_mono_width_as_rgb': (_msg(step=W), 'bad_step'),
    'step_too_big_for_data': (_msg(step=W * 3 + 2), 'data_size_mismatch'),
    'height_too_big_for_data': (_msg(height=H + 1), 'data_size_mismatch'),
    'width_larger_than_step': (_msg(width=W + 1), 'bad_step'),
    'truncated': (_msg(data=GOOD.data[:-1]), 'data_size_mismatch'),
    'oversized': (_msg(data=GOOD.data + b'\0'), 'data_size_mismatch'),
    'data_str': (_msg(data='x' * (H * W * 3)), 'bad_type'),
    'data_none': (_msg(data=None), 'bad_type'),
    'data_float_array': (_msg(data=np.zeros(H * W * 3 // 4, np.float32)), 'bad_type'),
    'data_list_out_of_range': (_msg(data=[300] * (H * W * 3)), 'bad_type'),
    'width_none': (_msg(width=None), 'bad_type'),
    'encoding_bytes': (_msg(encoding=b'rgb8'), 'bad_type'),
}


@pytest.mark.parametrize('case', sorted(REJECTIONS))
def test_raw_rejections(case):
    msg, reason = REJECTIONS[case]
    assert rejected(ic.decode_image, msg) == reason


def test_max_pixels_is_honoured():
    assert ic.decode_image(GOOD, max_pixels=H * W).shape == (H, W, 3)
    assert rejected(ic.decode_image, GOOD, max_pixels=H * W - 1) == 'too_large'


@pytest.mark.parametrize('max_pixels,reason', [(None, 'too_large'),
                                               (10 ** 11, 'data_size_mismatch')])
def test_huge_announced_image_is_not_allocated(max_pixels, reason):
    msg = SimpleNamespace(height=100000, width=100000, encoding='rgb8', is_bigendian=0,
                          step=300000, data=b'\1\2\3')
    kw = {} if max_pixels is None else {'max_pixels': max_pixels}
    tracemalloc.start()
    try:
        got = rejected(ic.decode_image, msg, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == reason
    assert peak < 1 << 20  # a decode attempt would need 30 GB


def comp_msg(fmt, payload):
    return SimpleNamespace(format=fmt, data=payload)


def smooth_rgb(h=32, w=48):
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.where(x < w // 2, 230, 10)  # red left half
    img[..., 1] = (y * 4).astype(np.uint8)
    img[..., 2] = np.where(x < w // 2, 10, 230)  # blue right half
    return img


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_round_trip(fmt):
    img = smooth_rgb()
    fmt_str, payload = ic.encode_compressed(img, fmt, quality=95)
    assert fmt_str == f'rgb8; {fmt} compressed bgr8' and isinstance(payload, bytes)
    for f in (fmt_str, fmt):
        out = ic.decode_compressed(comp_msg(f, payload))
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        if fmt == 'png':
            np.testing.assert_array_equal(out, img)
        else:
            assert np.abs(out.astype(int) - img).mean() < 4
        assert out[16, 2, 0] > 200 and out[16, 2, 2] < 50  # red stayed red
        assert out[16, -3, 2] > 200 and out[16, -3, 0] < 50


def test_compressed_grey_and_containers():
    ok, png = cv2.imencode('.png', GRAY)
    for data in (png.tobytes(), png.reshape(-1), array.array('B', png.tobytes()),
                 memoryview(png.tobytes())):
        np.testing.assert_array_equal(ic.decode_compressed(comp_msg('png', data)), grey3(GRAY))


def test_jpeg_quality_matters():
    img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert len(ic.encode_compressed(img, 'jpeg', 20)[1]) < len(ic.encode_compressed(img)[1])


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_undecodable_payloads(fmt):
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert rejected(ic.decode_compressed, comp_msg(fmt, noise)) == 'undecodable'
    assert rejected(ic.decode_compressed, comp_msg(fmt, b'')) == 'undecodable'
    good = ic.encode_compressed(smooth_rgb(), fmt)[1]
    broken = good[:40] + noise[:200]  # valid header, garbage body
    assert rejected(ic.decode_compressed, comp_msg(fmt, broken)) == 'undecodable'


def test_compressed_rejections():
    png = ic.encode_compressed(smooth_rgb(), 'png')[1]
    jpg = ic.encode_compressed(smooth_rgb(), 'jpeg')[1]
    ok, bmp = cv2.imencode('.bmp', smooth_rgb())
    for payload in (png, jpg, bmp.tobytes()):  # bmp: checked after decode
        assert ic.decode_compressed(comp_msg('x', payload), max_pixels=32 * 48).shape[:2] == \
            (32, 48)
        assert rejected(ic.decode_compressed, comp_msg('x', payload),
                        max_pixels=32 * 48 - 1) == 'too_large'
    depth = comp_msg('16UC1; compressedDepth png', png)
    assert rejected(ic.decode_compressed, depth) == 'unsupported_encoding'
    assert rejected(ic.decode_compressed, comp_msg(None, png)) == 'bad_type'
    assert rejected(ic.decode_compressed, comp_msg('png', 'text')) == 'bad_type'


def test_jpeg_announcing_huge_size_rejected_from_header():
    jpg = bytearray(ic.encode_compressed(smooth_rgb(), 'jpeg')[1])
    sof = next(i for i in range(2, len(jpg) - 1) if jpg[i] == 0xFF and jpg[i + 1] == 0xC0)
    assert jpg[sof + 5:sof + 9] == bytes([0, 32, 0, 48])  # height, width big-endian
    jpg[sof + 5:sof + 9] = bytes([0xEA, 0x60, 0xEA, 0x60])  # 60000 x 60000
    tracemalloc.start()
    try:
        got = rejected(ic.decode_compressed, comp_msg('jpeg', bytes(jpg)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == 'too_large' and peak < 1 << 20


def test_decode_any_dispatch():
    np.testing.assert_array_equal(ic.decode_any(case_msg('bgr8')), RGB)
    png = ic.encode_compressed(RGB, 'png')[1]
    np.testing.assert_array_equal(ic.decode_any(comp_msg('png', png)), RGB)
    assert rejected(ic.decode_any, object()) == 'bad_type'
    assert rejected(ic.decode_any, SimpleNamespace(data=png)) == 'bad_type'
    assert rejected(ic.decode_any, comp_msg('png', b'')) == 'undecodable'  # not read as raw


def test_frame_rejected():
    exc = FrameRejected('bad_step', 'step 3 < 4')
    assert isinstance(exc, ValueError) and exc.reason == 'bad_step' and 'step 3 < 4' in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert again.reason == 'bad_step' and str(again) == str(exc)
    assert set(ic.REJECT_REASONS) == {'unsupported_encoding', 'zero_size', 'too_large',
                                      'bad_step', 'data_size_mismatch', 'undecodable',
                                      'bad_type'}
    with pytest.raises(ValueError, match='unknown reject reason'):
        FrameRejected('nope', 'x')


def test_image_fields_round_trip():
    f = ic.image_fields(RGB, 'rgb8')
    assert isinstance(f['data'], array.array) and f['data'].typecode == 'B'
    assert (f['height'], f['width'], f['step'], f['is_bigendian']) == (H, W, W * 3, 0)
    np.testing.assert_array_equal(ic.decode_image(SimpleNamespace(**f)), RGB)
    f = ic.image_fields(GRAY, 'mono8')
    assert f['step'] == W
    np.testing.assert_array_equal(ic.decode_image(SimpleNamespace(**f)), grey3(GRAY))
    for order in ('<u2', '>u2'):
        f = ic.image_fields(MONO16.astype(order), 'mono16', as_numpy=True)
        assert f['step'] == 2 * W and f['is_bigendian'] == 0
        np.testing.assert_array_equal(np.frombuffer(f['data'], '<u2').reshape(H, W), MONO16)
        np.testing.assert_array_equal(ic.decode_image(SimpleNamespace(**f)),
                                      CASES['mono16'][2])
    depth = RNG.standard_normal((H, W)).astype(np.float32)
    for arr in (depth, depth.astype('>f4'), depth[:, ::-1].copy()[:, ::-1]):
        f = ic.image_fields(arr, '32FC1')
        assert f['step'] == 4 * W and f['encoding'] == '32FC1'
        np.testing.assert_array_equal(np.frombuffer(f['data'], '<f4').reshape(H, W), depth)


def test_image_fields_copies_and_handles_views():
    img = RGB.copy()
    for flip, as_numpy in itertools.product((False, True), (False, True)):
        src = img[:, ::-1] if flip else img  # a non-contiguous view, or the buffer itself
        f = ic.image_fields(src, 'rgb8', as_numpy=as_numpy)
        img[:] = 0  # later reuse of the caller's buffer must not change the message
        want = RGB[:, ::-1] if flip else RGB
        np.testing.assert_array_equal(ic.decode_image(SimpleNamespace(**f)), want)
        img[:] = RGB


@pytest.mark.parametrize('image,encoding,match', [
    (RGB, 'bgr8', 'output encoding'),
    (GRAY, 'rgb8', 'H x W x 3 uint8'),
    (RGB[..., :2], 'rgb8', 'H x W x 3 uint8'),
    (RGB.astype(np.float32), 'rgb8', 'uint8'),
    (RGB, 'mono8', 'H x W uint8'),
    (GRAY.astype(np.float64), '32FC1', 'float32'),
    (GRAY, 'mono16', 'uint16'),
    (np.zeros((0, 4), np.uint8), 'mono8', 'empty'),
    (GRAY.tolist(), 'mono8', 'numpy array'),
])
def test_image_fields_validation(image, encoding, match):
    with pytest.raises(ValueError, match=match):
        ic.image_fields(image, encoding)


def test_encode_compressed_validation():
    with pytest.raises(ValueError, match='not in jpeg, png'):
        ic.encode_compressed(RGB, 'webp')
    with pytest.raises(ValueError, match='H x W x 3 uint8'):
        ic.encode_compressed(GRAY, 'png')
    with pytest.raises(ValueError, match='quality'):
        ic.encode_compressed(RGB, 'jpeg', quality=0)


def test_module_imports_no_ros():
    code = ('import sys, dovit_ros.runtime.image_codec; '
            'bad = [m for m in sys.modules if m.startswith("rclpy") or m.endswith("_msgs")]; '
            'sys.exit(str(bad) if bad else 0)')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
