"""ros2 launch mobius_ros segment.launch.py [image:=/camera/image_raw] [params_file:=p.yaml]

Starts the segmentation node, a managed (lifecycle) node that configures and activates
itself (``autostart``, default true; ``ros2 lifecycle set /mobius ...`` at run time), and
RViz with config/mobius.rviz in the node's namespace when ``use_rviz:=true``.

Arguments: params_file, namespace, image (input topic remap; the compressed transport
follows it), depth and camera_info (remaps of the registered depth image and the colour
camera's camera_info, read with use_depth:=true), and the parameter arguments transport,
use_depth, backend, model, target_fps, autostart, use_sim_time. A parameter argument
overrides the params file only when it is given: left out, the file's value (or the node's
default) stands.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "mobius_ros"
EXECUTABLE = "mobius_node"
# Parameter arguments: name -> (type, description). "" (the default) = not given.
PARAMETER_ARGUMENTS = {
    "transport": (str, "raw | compressed (subscribe <image>/compressed)"),
    "use_depth": (bool, "synchronise depth + camera_info: 3D per instance (true | false)"),
    "backend": (str, "onnxruntime | tensorrt | torch"),
    "model": (str, "model file ('' = the shipped model)"),
    "target_fps": (float, "frame-rate budget (0 = off)"),
    "autostart": (bool, "configure and activate at start (true | false)"),
    "use_sim_time": (bool, "take time from /clock (bag replay)"),
}


# Topic arguments: the node's relative topic -> (default remap, description).
TOPICS = {
    "image": ("/camera/image_raw", "input image topic"),
    "depth": ("/camera/depth/image_raw", "depth image registered to the colour image (use_depth)"),
    "camera_info": ("/camera/camera_info", "camera_info of the colour camera (use_depth)"),
}


def given_parameters(values: dict[str, str]) -> dict[str, object]:
    """The parameter arguments the user passed, converted to their types."""
    out: dict[str, object] = {}
    for name, (kind, _) in PARAMETER_ARGUMENTS.items():
        text = values.get(name, "").strip()
        if not text:
            continue
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"launch argument {name}:={text}: use true or false")
            out[name] = text.lower() == "true"
        elif kind is float:
            try:
                out[name] = float(text)
            except ValueError:
                raise ValueError(f"launch argument {name}:={text}: give a number") from None
        else:
            out[name] = text
    return out


def _node(context, share: str):
    values = {n: LaunchConfiguration(n).perform(context) for n in PARAMETER_ARGUMENTS}
    params = [LaunchConfiguration("params_file").perform(context)]
    overrides = given_parameters(values)
    if overrides:
        params.append(overrides)
    namespace = LaunchConfiguration("namespace").perform(context)
    # A plain Node action: the node drives its own lifecycle (autostart), and launch_ros's
    # LifecycleNode action would add a ROS node to the launch process that slows its exit.
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="mobius",
        namespace=namespace,
        output="screen",
        parameters=params,
        remappings=[(t, LaunchConfiguration(t).perform(context)) for t in TOPICS],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        namespace=namespace,  # the RViz config's topics are relative: the node's namespace
        arguments=["-d", os.path.join(share, "config", "mobius.rviz")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return [node, rviz]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "segment.yaml"),
            description="ROS 2 parameter file (defaults: config/segment.yaml)",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        *[
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in TOPICS.items()
        ],
        *[
            DeclareLaunchArgument(name, default_value="", description=f"{text}; '' = not given")
            for name, (_, text) in PARAMETER_ARGUMENTS.items()
        ],
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node, args=[share])])
