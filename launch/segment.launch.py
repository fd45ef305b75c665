"""Start segment_node: ros2 launch dovit_ros segment.launch.py image:=/your/camera/image_raw

Sets FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA for the node. Fast DDS's default transports lose
large frames (above ~0.5 MB, i.e. 480x360 rgb8 already) to best-effort subscribers, and a
participant with LARGE_DATA does not discover one without it: export the same variable in
the shells of the camera driver, the bag player and rviz2 (or pass large_data:=false and
keep the defaults everywhere).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='Input image topic (the node subscribes to `image`)'),
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution(
            [FindPackageShare('dovit_ros'), 'config', 'segment.yaml']),
            description='Parameters file (/**: ros__parameters:)'),
        DeclareLaunchArgument('namespace', default_value='', description='Node namespace'),
        DeclareLaunchArgument('model', default_value='camvid-dovit-tiny',
                              description='Installed model name or model directory'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (e.g. with a bag player)'),
        DeclareLaunchArgument('large_data', default_value='true',
                              description='Export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA'),
        SetEnvironmentVariable('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA',
                               condition=IfCondition(arg('large_data'))),
        Node(
            package='dovit_ros', executable='segment_node', name='dovit_segmenter',
            namespace=arg('namespace'), output='screen', emulate_tty=True,
            parameters=[arg('params_file'), {
                'model': arg('model'),
                'use_sim_time': ParameterValue(arg('use_sim_time'), value_type=bool),
            }],
            remappings=[('image', arg('image'))],
        ),
    ])
