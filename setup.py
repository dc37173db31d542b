"""ament_python package: `colcon build` on a robot, `pip install -e .` in a plain venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "salad_ros"
#: Installed name -> repository folder of the offline tool packages.
TOOL_PACKAGES = {f"{PACKAGE}_training": "training", f"{PACKAGE}_export": "export"}

setup(
    name=PACKAGE,
    version="0.1.0",
    # training/ and export/ stay top-level folders of the repository (``python -m training.train``
    # there), but install under prefixed names: a top-level ``training`` or ``export`` package in
    # site-packages would clash with other projects.
    packages=[*find_packages(include=[PACKAGE, f"{PACKAGE}.*"]), *TOOL_PACKAGES],
    package_dir={name: folder for name, folder in TOOL_PACKAGES.items()},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # Runtime dependencies (torch, faiss, opencv, rclpy, ...) are installed by scripts/setup.sh
    # or, on a robot, by the ROS install plus requirements-robot.txt: nothing is pulled in here.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="salad_ros maintainers",
    maintainer_email="maintainers@salad-ros.invalid",
    description="Visual loop-closure detection for ROS 2 with DINOv2 SALAD",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "loop_closure_node = salad_ros.node_main:main",
            "salad_replay = salad_ros.evaluation.replay:main",
            "salad_demo_bag = salad_ros.evaluation.demo_bag:main",
            "salad_train = salad_ros_training.train:main",
            "salad_evaluate = salad_ros_training.evaluate:main",
            "salad_export_onnx = salad_ros_export.onnx:main",
            "salad_export_tensorrt = salad_ros_export.tensorrt:main",
        ],
    },
)
