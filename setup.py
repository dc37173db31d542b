"""ament_python package: `colcon build` on a robot, `pip install -e .` in a plain venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "salad_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*", "export", "export.*"]),
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
            "loop_closure_node = salad_ros.node:main",
            "salad_replay = salad_ros.evaluation.replay:main",
            "salad_demo_bag = salad_ros.evaluation.demo_bag:main",
            "salad_train = training.train:main",
            "salad_evaluate = training.evaluate:main",
            "salad_export_onnx = export.onnx:main",
            "salad_export_tensorrt = export.tensorrt:main",
        ],
    },
)
