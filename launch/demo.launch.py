"""The README's "rviz2 overlays on driving bags" in one command:

    ros2 launch dovit_ros demo.launch.py [bag:=PATH] [rate:=1.0] [loop:=true] [rviz:=true]

Plays a bag (the shipped CamVid clip by default, looped) with `dovit-bag play --decompress
--clock` into segment_node, started by including segment.launch.py with use_sim_time:=true (one
definition of the node), so the node's clock is the bag's /clock and its outputs carry the bag's
stamps. `rviz:=true` starts rviz2 with config/overlay.rviz
(also on sim time) when rviz2 is installed, and logs a line saying so when it is not.

FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA is set for every process started here (player, node,
rviz2): they must agree on it (see segment.launch.py).
"""
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription,
                            LogInfo, OpaqueFunction, SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import ExecutableInPackage, FindPackageShare

SHARE = FindPackageShare('dovit_ros')
# The player holds the first frame until the node subscribes (the model loads in seconds).
WAIT_FOR_NODE_S = '120'


def is_true(context, name: str) -> bool:
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value not in ('true', 'false', '1', '0'):
        raise ValueError(f'launch argument {name} must be true or false, got {value!r}')
    return value in ('true', '1')


def player_actions(context):
    """dovit-bag play with /clock: the node's ROS time follows the frames' stamps."""
    cmd = [ExecutableInPackage('dovit-bag', 'dovit_ros'), 'play', LaunchConfiguration('bag'),
           '--decompress', '--clock', '--rate', LaunchConfiguration('rate'), '--quiet',
           '--wait-for-subscribers', WAIT_FOR_NODE_S]
    if is_true(context, 'loop'):
        cmd.append('--loop')
    return [ExecuteProcess(name='dovit_bag_player', cmd=cmd, output='screen', emulate_tty=True)]


def rviz_actions(context):
    """rviz2 with the overlay config when rviz2 is installed, else one clear log line."""
    if not is_true(context, 'rviz'):
        return []
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        return [LogInfo(msg='rviz:=true but rviz2 is not installed (no rviz2 package on '
                            f'AMENT_PREFIX_PATH={os.environ.get("AMENT_PREFIX_PATH", "")}): '
                            'running without it; install ros-<distro>-rviz2 to see the overlay')]
    config = PathJoinSubstitution([SHARE, 'config', 'overlay.rviz']).perform(context)
    return [Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                 arguments=['-d', config], parameters=[{'use_sim_time': True}])]


def generate_launch_description():
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument('bag', default_value=PathJoinSubstitution(
            [SHARE, 'config', 'demo', 'camvid_0016E5_30f.mcap']),
            description='Bag (MCAP, SQLite 3 or rosbag2 folder) with image topics'),
        DeclareLaunchArgument('rate', default_value='1.0', description='Playback speed factor'),
        DeclareLaunchArgument('loop', default_value='true', description='Start over at the end'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start rviz2 with config/overlay.rviz'),
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='Topic the node segments: a bag topic as played '
                                          '(a CompressedImage X/compressed plays as Image X)'),
        DeclareLaunchArgument('model', default_value='camvid-dovit-tiny',
                              description='Installed model name or model directory'),
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution(
            [SHARE, 'config', 'segment.yaml']), description='Parameters file of the node'),
        DeclareLaunchArgument('large_data', default_value='true',
                              description='Export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA'),
        SetEnvironmentVariable('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA',
                               condition=IfCondition(arg('large_data'))),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([SHARE, 'launch', 'segment.launch.py'])),
            launch_arguments={'image': arg('image'), 'model': arg('model'),
                              'params_file': arg('params_file'), 'use_sim_time': 'true',
                              'large_data': arg('large_data')}.items()),
        OpaqueFunction(function=player_actions),
        OpaqueFunction(function=rviz_actions),
    ])
