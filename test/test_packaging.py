"""What `pip install .` puts into site-packages: salad_ros and its prefixed tool packages only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_no_top_level_training_or_export(tmp_path):
    # Build from a copy of the tracked files: setuptools' build/ folder in the work tree could hold
    # modules deleted since, and the wheel would ship them.
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    # --no-build-isolation: build with this venv's setuptools, nothing downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("salad_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"salad_ros", "salad_ros_training", "salad_ros_export"}
    assert "salad_ros_training/evaluate.py" in names and "salad_ros_export/onnx.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = dict(line.split(" = ") for line in zipfile.ZipFile(wheel).read(entry).decode().splitlines() if " = " in line)
    assert scripts["salad_train"] == "salad_ros_training.train:main"
    assert scripts["salad_evaluate"] == "salad_ros_training.evaluate:main"
    assert scripts["salad_export_onnx"] == "salad_ros_export.onnx:main"
    assert scripts["salad_export_tensorrt"] == "salad_ros_export.tensorrt:main"
    # the data files a colcon build installs beside the code
    assert any(n.endswith("share/salad_ros/launch/loop_closure.launch.py") for n in names)
    assert any(n.endswith("share/salad_ros/config/salad_ros.yaml") for n in names)


def test_installed_tool_names_import_outside_the_repository(tmp_path):
    """The console scripts' modules import from the installed package, not the repo's folders."""
    code = ("import sys, salad_ros_training.evaluate as e, salad_ros_export.onnx as o; "
            "assert callable(e.main) and callable(o.main); "
            "assert 'training' not in sys.modules and 'export' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
