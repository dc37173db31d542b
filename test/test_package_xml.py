"""package.xml declares what the code imports, so `rosdep install` gives a robot everything the node
and offline replay need; requirements-robot.txt adds only what rosdep can't (CUDA builds, export
and training tools) and never a second OpenCV beside python3-opencv."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Python modules of salad_ros/ and the rosdep keys that install them (keys from
#: ros/rosdistro rosdep/python.yaml; '-pip' keys install from PyPI).
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "torch": "python3-torch",
    "faiss": "python3-faiss", "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
    "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib",
}
#: Imported by salad_ros/ without a rosdep key: from PyPI through requirements-robot.txt.
PIP_ONLY = {"onnx"}  # the onnxruntime backend reads the exported model's metadata with it
#: Imported by salad_ros/ but optional and without a rosdep key (TensorRT, OpenVINO, xformers, zstd/lz4 bags).
OPTIONAL = {"tensorrt", "openvino", "xformers", "lz4", "backports", "compression"}


def _exec_depends() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    return {e.text.strip() for e in root if e.tag in ("exec_depend", "depend")}


def _imported_modules(*folders: str) -> set[str]:
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):  # real imports, not prose that starts "from the"
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def _ros_packages(modules: set[str]) -> set[str]:
    """ROS packages among imported top-level modules: message packages and the client libraries."""
    ros = {"rclpy", "rcl_interfaces", "launch", "launch_ros", "ament_index_python"}
    return {m for m in modules if m in ros or m.endswith(("_msgs", "_srvs", "_interfaces"))}


def test_every_imported_ros_package_is_an_exec_depend():
    imported = _ros_packages(_imported_modules("salad_ros", "launch"))
    assert {"rclpy", "rcl_interfaces", "sensor_msgs", "launch_ros"} <= imported  # the scan works
    assert imported - _exec_depends() == set()


def test_every_python_dependency_of_the_package_has_its_rosdep_key():
    imported = _imported_modules("salad_ros")
    third_party = {m for m in imported if m in ROSDEP_KEYS}
    assert {"torch", "faiss", "cv2", "rosbags"} <= third_party
    assert {ROSDEP_KEYS[m] for m in third_party} - _exec_depends() == set()
    # anything else imported is the standard library, ROS, salad_ros itself or known optional
    import sys

    others = imported - third_party - _ros_packages(imported) - OPTIONAL - set(sys.stdlib_module_names)
    assert others <= {"salad_ros"} | PIP_ONLY, others
    assert all(re.search(rf"^{m}\b", _robot_requirements(), re.M) for m in PIP_ONLY)


def _robot_requirements() -> str:
    lines = (ROOT / "requirements-robot.txt").read_text().splitlines()
    return "\n".join(line.split("#")[0].strip() for line in lines if line.split("#")[0].strip())


def test_one_opencv_on_a_robot():
    assert "python3-opencv" in _exec_depends()
    requirements = _robot_requirements().splitlines()
    assert not any(r.lower().startswith("opencv") for r in requirements), requirements
    xml = (ROOT / "package.xml").read_text()
    assert "not in rosdep" not in xml  # the old, wrong comment: they are
