"""ROS conventions of segment_node over real DDS: camera_info beside the image republished with
each segmented frame's header, the JPEG `~/overlay/compressed` (only encoded while subscribed,
quality parameter), QoS overrides on the outputs.

One node process (a tiny random-weight model) and an rclpy client in this process, on a
ROS_DOMAIN_ID of this run's own.
"""
import re
import signal

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dovit_ros.ros.harness import (Client, NodeProcess, fresh_domain_id, image_msg,
                                   make_test_model, ros_env, stamp_of)
from dovit_ros.runtime.image_codec import decode_compressed, decode_image

DOMAIN = fresh_domain_id()
NS = '/conv'
H, W = 96, 128
pytestmark = pytest.mark.usefixtures('one_thread')


def smooth_frame(seed: int) -> np.ndarray:
    """A smooth image (JPEG quality shows in its size, unlike on noise)."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 2 + seed, y * 2, (x + y + seed * 7) % 256], -1)
    return (rgb % 256).astype(np.uint8)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    model = make_test_model(tmp_path_factory.mktemp('model') / 'tiny')
    client = Client(DOMAIN, namespace=NS, name='conv_client')
    node = NodeProcess(['-r', f'__ns:={NS}', '-r', 'image:=/cc/image_raw',
                        '-p', f'model:={model}', '-p', 'qos_reliability:=reliable',
                        '-p', f'qos_overrides.{NS}/dovit_segmenter/labels.publisher.reliability:='
                        'best_effort'], ros_env(DOMAIN))
    try:
        assert node.wait_for('ready', 180), node.output
        pub = client.image_publisher('/cc/image_raw', 'reliable')
        assert client.wait_matched(pub), node.output
        yield client, node, pub
    finally:
        node.stop(signal.SIGINT)
        client.close()


def keep(client, msg_type, topic, store, qos=None):
    return client.node.create_subscription(
        msg_type, topic, lambda m: store.__setitem__(stamp_of(m), m), qos or QoSProfile(depth=5))


def send_until(client, pub, stamp_sec, until, frames, timeout):
    """Publish frames (stamps (stamp_sec, k)) once a second until `until(stamp)` holds for one
    of them (discovery of new subscriptions takes a moment): that stamp, or None."""
    sent = []
    for k in range(int(timeout)):
        s = (stamp_sec, k)
        pub.publish(image_msg(frames(k), s))
        sent.append(s)
        if client.spin_until(lambda: any(until(x) for x in sent), 1.0):
            return next(x for x in sent if until(x))
    return None


def test_camera_info_beside_the_image_is_republished_with_the_frame_header(setup):
    client, node, pub = setup
    labels, infos = {}, {}
    keep(client, Image, f'{NS}/dovit_segmenter/labels', labels,
         QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    keep(client, CameraInfo, f'{NS}/dovit_segmenter/camera_info', infos)
    # no camera_info yet: frames are segmented, ~/camera_info stays silent, diagnostics say so
    first = send_until(client, pub, 10, lambda s: s in labels, smooth_frame, 60)
    assert first is not None, node.output
    kv = client.latest_diagnostics(lambda kv: 'camera_info' in kv, 10.0)
    assert kv and kv['camera_info'].startswith('none received on /cc/camera_info'), kv
    assert not infos
    # a camera_info on the image's sibling topic, as a camera driver publishes it
    info_pub = client.node.create_publisher(CameraInfo, '/cc/camera_info', QoSProfile(depth=1))
    info = CameraInfo(height=H, width=W, distortion_model='plumb_bob',
                      d=[0.1, -0.2, 0.0, 0.0, 0.0],
                      k=[100.0, 0.0, 64.0, 0.0, 100.0, 48.0, 0.0, 0.0, 1.0])
    info.header.frame_id = 'camera'
    assert client.spin_until(lambda: info_pub.get_subscription_count() > 0, 20.0)

    def republished(s):
        if not info_pub.get_subscription_count():
            return False
        info_pub.publish(info)
        return s in infos
    stamp = send_until(client, pub, 20, republished, smooth_frame, 60)
    assert stamp is not None, node.output
    out = infos[stamp]
    # the segmented frame's header (stamp and frame_id), the camera's calibration
    assert stamp_of(out) == stamp and out.header.frame_id == 'camera'
    assert (out.height, out.width, out.distortion_model) == (H, W, 'plumb_bob')
    assert list(out.k) == list(info.k) and list(out.d) == list(info.d)
    kv = client.latest_diagnostics(lambda kv: kv.get('camera_info', '').startswith('flowing'),
                                   10.0)
    assert kv and 'from /cc/camera_info' in kv['camera_info'], kv


def test_compressed_overlay_only_while_subscribed_with_its_quality(setup):
    client, node, pub = setup
    labels = {}
    keep(client, Image, f'{NS}/dovit_segmenter/labels', labels,
         QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert send_until(client, pub, 30, lambda s: s in labels, smooth_frame, 60), node.output
    kv = client.latest_diagnostics(lambda kv: 'overlay jpeg frames' in kv, 10.0)
    assert kv and kv['overlay jpeg frames'] == '0', kv   # nobody asked: never encoded
    jpegs, overlays = {}, {}
    keep(client, CompressedImage, f'{NS}/dovit_segmenter/overlay/compressed', jpegs)
    keep(client, Image, f'{NS}/dovit_segmenter/overlay', overlays)
    same = lambda k: smooth_frame(0)   # noqa: E731 - one content for both qualities
    both = send_until(client, pub, 40, lambda s: s in jpegs and s in overlays, same, 60)
    assert both is not None, node.output
    msg = jpegs[both]
    assert msg.format == 'rgb8; jpeg compressed bgr8' and msg.header.frame_id == 'camera'
    decoded = decode_compressed(msg)
    raw = decode_image(overlays[both])
    assert decoded.shape == raw.shape == (H, W, 3)
    assert np.abs(decoded.astype(int) - raw).mean() < 8   # the same overlay, JPEG-coded
    size_80 = len(msg.data)   # default quality 80
    [(ok, why)] = client.set_params({'overlay_jpeg_quality': 10})
    assert ok, why
    [(ok, why)] = client.set_params({'overlay_jpeg_quality': 101})
    assert not ok and re.search(r'out of range|outside', why), why
    low = send_until(client, pub, 50, lambda s: s in jpegs, same, 60)
    assert low is not None
    assert len(jpegs[low].data) < size_80 * 0.8, (len(jpegs[low].data), size_80)
    kv = client.latest_diagnostics(lambda kv: int(kv.get('overlay jpeg frames', 0)) > 0, 10.0)
    assert kv, node.output


def test_qos_override_applies_to_an_output(setup):
    client, node, _ = setup

    def labels_publishers():
        return client.node.get_publishers_info_by_topic(f'{NS}/dovit_segmenter/labels')
    assert client.spin_until(lambda: bool(labels_publishers()), 20.0)
    assert labels_publishers()[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    others = client.node.get_publishers_info_by_topic(f'{NS}/dovit_segmenter/overlay')
    assert others and others[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
