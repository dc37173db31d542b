"""Launch the DINOv2 SALAD loop-closure node.

    ros2 launch salad_ros loop_closure.launch.py image_topic:=/camera/image_raw weights:=/path/dino_salad.ckpt

Arguments: image_topic, params_file, weights, namespace, use_sim_time, robot_id, fleet
(``ros2 launch ... --show-args``). With ``image_transport: compressed`` in the params file the node
reads ``<image_topic>/compressed``. A fleet: one launch per robot, each with its own namespace and
robot_id, all with fleet:=true::

    ros2 launch salad_ros loop_closure.launch.py namespace:=robot1 robot_id:=1 fleet:=true ...
"""

from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

# config/ sits next to launch/ both in the source tree and in share/salad_ros after colcon build,
# so the default needs no ament index lookup (and works from a plain pip install too).
DEFAULT_PARAMS = str(Path(__file__).resolve().parent.parent / "config" / "salad_ros.yaml")

ARGUMENTS = (
    ("image_topic", "image", "Camera topic (sensor_msgs/Image; '<topic>/compressed' with compressed transport)"),
    ("params_file", DEFAULT_PARAMS, "Parameters file (ROS 2 YAML, node name salad_loop_closure)"),
    ("weights", "", "SALAD checkpoint; overrides 'weights' in params_file when not empty"),
    ("namespace", "", "Namespace for the node and its topics"),
    ("use_sim_time", "false", "Use /clock (bag replay)"),
    ("robot_id", "", "This robot's fleet id; overrides 'robot_id' in params_file when not empty"),
    ("fleet", "", "true/false: share keyframes with the fleet; overrides 'fleet.enable' when not empty"),
)


def _flag(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _node(context, *_args, **_kwargs):
    """Build the node once the arguments are known (weights is only set when given)."""
    from salad_ros.params import DEFAULT_NODE_NAME, load_params_yaml

    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    # The file's section is keyed by the bare node name, which rcl would not match once a
    # namespace is set; handing the values over as a dict applies them in any namespace.
    params = load_params_yaml(arg["params_file"], DEFAULT_NODE_NAME)
    params["use_sim_time"] = _flag(arg["use_sim_time"])
    if arg["weights"]:
        params["weights"] = arg["weights"]
    if arg["robot_id"].strip():
        params["robot_id"] = int(arg["robot_id"])  # a bad value fails the launch, naming it
    if arg["fleet"].strip():
        params["fleet.enable"] = _flag(arg["fleet"])
    topic = arg["image_topic"]
    return [
        Node(
            package="salad_ros",
            executable="loop_closure_node",
            name=DEFAULT_NODE_NAME,
            namespace=arg["namespace"],
            parameters=[params],
            # with compressed transport the node follows the base topic to '<image_topic>/compressed'
            remappings=[("image", topic)],
            output="screen",
            emulate_tty=True,
            # launch stops a node with SIGINT, SIGTERM after sigterm_timeout (5 s) and SIGKILL
            # sigkill_timeout s later; the node finishes saving its map whatever signals come, so
            # only SIGKILL cuts a save short: give a big map 30 s more to be written
            sigkill_timeout="30",
        )
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
        + [OpaqueFunction(function=_node)]
    )
