"""dovit_ros: ament_python package that also installs with plain pip.

ROS users build it with colcon; everyone else uses `pip install -e .[ros,test]`.
"""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'dovit_ros'


def data_tree(folder):
    """(install dir, files) pairs that mirror `folder` under share/dovit_ros."""
    out = []
    for root, _, files in os.walk(folder):
        paths = [os.path.join(root, f) for f in files if not f.startswith('.')]
        if paths:
            out.append((os.path.join('share', PACKAGE, root), paths))
    return out


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.py') + glob('launch/*.xml')),
    ] + data_tree('config') + data_tree('models'),
    python_requires='>=3.10',
    install_requires=[
        # 2.13.0 is the local CPU build; the range admits it without pulling another build.
        'torch>=2.4,<2.14',
        'numpy>=1.24',
        'opencv-python-headless>=4.8',
        'PyYAML>=6.0',
        'safetensors>=0.4',
        'tqdm>=4.60',
        # 0.11.6: Writer.abort() (dovit-bag writes to a temporary name and aborts on error)
        'rosbags>=0.11.6',
    ],
    extras_require={
        # The PyPI ROS 2 wheels, pinned to the Kilted series: rosbags' typestore
        # (Stores.ROS2_KILTED) and the message definitions the bags embed assume it.
        'ros': [
            'ros-rclpy>=9.1,<9.2', 'ros-sensor-msgs>=5.5,<5.6', 'ros-std-msgs>=5.5,<5.6',
            'ros-diagnostic-msgs>=5.5,<5.6', 'ros-rcl-interfaces>=2.3,<2.4',
            'ros-rosgraph-msgs>=2.3,<2.4', 'ros-ament-index-python>=1.11,<1.12',
            'ros-rmw-fastrtps-cpp>=9.3,<9.4',
        ],
        # Not needed by the node: dovit-eval's plot (matplotlib) and Cityscapes (class table).
        'plots': ['matplotlib>=3.7'],
        'cityscapes': ['cityscapesscripts>=2.2'],
        'tensorrt': ['torch-tensorrt'],
        # the tests cover plots and Cityscapes too
        'test': ['pytest>=7', 'flake8>=6', 'hypothesis>=6', 'mcap>=1.1', 'mcap-ros2-support>=0.5',
                 'matplotlib>=3.7', 'cityscapesscripts>=2.2'],
    },
    zip_safe=False,
    maintainer='dovit_ros developers',
    description='DoViT/DToP early-exit ViT semantic segmentation for ROS 2',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'segment_node = dovit_ros.ros.node:main',
            'dovit-bench = dovit_ros.cli.bench:main',
            'dovit-bag = dovit_ros.cli.bag:main',
            'dovit-eval = dovit_ros.cli.eval:main',
            'dovit-compare = dovit_ros.cli.compare:main',
            'dovit-export = dovit_ros.cli.export:main',
            'dovit-train = dovit_ros.cli.train:main',
        ],
    },
)
