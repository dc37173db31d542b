"""Keyframe database: an incremental FAISS index of SALAD descriptors plus keyframe records.

One job per module:

* :mod:`.config`    - :class:`DatabaseConfig` (ROS parameters ``database.*``), :class:`DatabaseError`;
* :mod:`.index`     - faiss index factory, GPU placement (:func:`choose_device`), sizing, search
  knobs and the canonical-order search with its thread pool;
* :mod:`.table`     - the keyframe records (stamps, poses, frame ids, metadata, origin: which
  robot made it), :class:`Keyframe`, :class:`Origin`;
* :mod:`.keyframes` - :class:`KeyframeDatabase`: add, lookup, search (with the exclusion rule of
  :mod:`salad_ros.exclusions`), save and load;
* :mod:`.storage`   - the generational, checksummed on-disk format (``FORMAT_NAME``): save with
  attachments (the verification thumbnails) committed together, bounded and hostile-safe load;
* :mod:`.backup`    - ``previous/``: the one backup of a replaced map that held keyframes the new
  one lacks.

Poses come from :mod:`salad_ros.geometry`, atomic writes and hashes from :mod:`salad_ros.fileio`;
both are re-exported here for existing callers. This package imports no rclpy.
"""

from salad_ros.fileio import write_bytes_atomic
from salad_ros.geometry import Pose, rotation_angle, translation_distance

from .config import DatabaseConfig, DatabaseError
from .index import choose_device
from .keyframes import KeyframeDatabase
from .storage import FORMAT_NAME, FORMAT_VERSION, MANIFEST
from .table import MAX_METADATA_BYTES, Keyframe, Origin, new_session

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "MAX_METADATA_BYTES", "DatabaseConfig", "DatabaseError",
    "Keyframe", "KeyframeDatabase", "Origin", "Pose", "choose_device", "rotation_angle", "translation_distance",
    "new_session", "write_bytes_atomic",
]
