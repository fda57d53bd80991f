"""ros2 launch mobius_ros segment.launch.py [image:=/camera/image_raw] [prompts via params_file]

Arguments: params_file, namespace, image (input topic remap), backend, model, target_fps,
use_rviz. Starts the segmentation node (and RViz with config/mobius.rviz when use_rviz).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

PACKAGE = "mobius_ros"
EXECUTABLE = "mobius_node"


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "segment.yaml"),
            description="ROS 2 parameter file (defaults: config/segment.yaml)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument(
            "image", default_value="/camera/image_raw", description="input image topic"
        ),
        DeclareLaunchArgument(
            "backend", default_value="onnxruntime", description="onnxruntime | tensorrt | torch"
        ),
        DeclareLaunchArgument(
            "model", default_value="", description="model file ('' = the shipped model)"
        ),
        DeclareLaunchArgument(
            "target_fps", default_value="0.0", description="frame-rate budget (0 = off)"
        ),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz"),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="mobius",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "target_fps": ParameterValue(LaunchConfiguration("target_fps"), value_type=float),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("image/compressed", [LaunchConfiguration("image"), "/compressed"]),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", os.path.join(share, "config", "mobius.rviz")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription([*args, node, rviz])
