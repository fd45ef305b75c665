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
        ('share/' + PACKAGE + '/launch', glob('launch/*.py')),
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
        'matplotlib>=3.7',
        'cityscapesscripts>=2.2',
        'rosbags>=0.10',
        'rosbags-image>=0.9',
    ],
    extras_require={
        'ros': [
            'ros-rclpy', 'ros-sensor-msgs', 'ros-std-msgs', 'ros-diagnostic-msgs',
            'ros-rcl-interfaces', 'ros-rmw-fastrtps-cpp',
        ],
        'tensorrt': ['torch-tensorrt'],
        'test': ['pytest>=7', 'flake8>=6', 'hypothesis>=6', 'mcap>=1.1', 'mcap-ros2-support>=0.5'],
    },
    zip_safe=False,
    maintainer='dovit_ros developers',
    description='DoViT/DToP early-exit ViT semantic segmentation for ROS 2',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'segment_node = dovit_ros.ros.node:main',
            'dovit-bench = dovit_ros.cli.bench:main',
            'dovit-bag = dovit_ros.cli.bag:main',
            'dovit-eval = dovit_ros.cli.eval:main',
            'dovit-export = dovit_ros.cli.export:main',
            'dovit-train = dovit_ros.cli.train:main',
        ],
    },
)
