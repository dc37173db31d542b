"""Replay frames with their camera_info and depth: one pass over the bag's image, camera_info
and depth topics, paired by stamp like the node does (:class:`~salad_ros.io.stamp_matcher.StampMatcher`
within ``sync_tolerance``; the last valid CameraInfo of a frame_id serves later frames) and
decoded and checked by :class:`~salad_ros.pose_inputs.PoseInputs`, which counts bad or missing
input per kind. Deterministic: waiting is decided by stamps (a bag has every message).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..io.bags import BagReader, BagReadError
from ..io.images import ImageDecodeError, msg_to_rgb
from ..io.stamp_matcher import StampMatcher, SyncedFrame
from ..pose_inputs import CAMERA_INFO, DEPTH, PoseInputs
from .frames import Frame, ReadStats

#: A frame waits for its companions until the bag is this far past its stamp.
_MAX_WAIT_NS = 2_000_000_000


def iter_frames_with_companions(reader: BagReader, image_topic: str, camera_info_topic: str | None,
                                depth_topic: str | None, every: int, max_frames: int | None, stats: ReadStats,
                                tolerance_ns: int, inputs: PoseInputs) -> Iterator[Frame]:
    """Decoded frames of ``image_topic`` like :func:`~salad_ros.evaluation.frames.iter_frames`
    (every ``every``-th message, at most ``max_frames``, undecodable ones counted and skipped),
    each with ``camera`` and ``depth`` set from its companions (None where missing or bad)."""
    topics = {t: s for t, s in ((camera_info_topic, CAMERA_INFO), (depth_topic, DEPTH)) if t}
    matcher = StampMatcher(tuple(topics.values()), tolerance_ns, _MAX_WAIT_NS, max_pending=20, max_buffer=60)
    taken = 0
    n = -1

    def emit(synced: list[SyncedFrame]) -> Iterator[Frame]:
        nonlocal taken
        for s in synced:
            frame = _decode(s, stats, inputs, CAMERA_INFO in topics.values(), DEPTH in topics.values())
            if frame is not None and (max_frames is None or taken < max_frames):
                taken += 1
                yield frame

    try:
        for m in reader.messages([image_topic, *topics]):
            if max_frames is not None and taken >= max_frames:
                return
            if m.topic in topics:
                yield from emit(matcher.add_companion(topics[m.topic], m.stamp_ns, m.msg))
                continue
            stats.messages += 1
            n += 1
            if n % every == 0:
                yield from emit(matcher.add_frame(m.stamp_ns, (n, m.msg)))
    except BagReadError as exc:
        stats.error = str(exc)
        stats.last_good_index = exc.last_good_index
    yield from emit(matcher.flush())


def _decode(synced: SyncedFrame, stats: ReadStats, inputs: PoseInputs, want_camera: bool,
            want_depth: bool) -> Frame | None:
    index, msg = synced.frame
    t0 = time.perf_counter()
    try:
        rgb = msg_to_rgb(msg)
    except ImageDecodeError as exc:
        stats.bad[exc.kind] = stats.bad.get(exc.kind, 0) + 1
        stats.first_bad = stats.first_bad or f"image message {index}: {exc}"
        return None
    frame_id = getattr(getattr(msg, "header", None), "frame_id", "")
    camera, depth = inputs.resolve(rgb.shape, frame_id, synced.get(CAMERA_INFO), synced.get(DEPTH),
                                   camera_expected=want_camera, depth_expected=want_depth)
    return Frame(index, synced.stamp_ns, rgb, frame_id, time.perf_counter() - t0, camera=camera, depth=depth)


def companion_summary(inputs: PoseInputs) -> dict[str, int]:
    """Bad or missing pose input per kind, for the report (zeros left out)."""
    return {k: v for k, v in inputs.snapshot().items() if v}
