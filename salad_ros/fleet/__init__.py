"""Multi-robot loop closure: robots share keyframes over a ROS 2 topic (ROS-free core).

One job per module:

* :mod:`.wire`    - one shared keyframe as a one-row sensor_msgs/PointCloud2 (layout, encode,
  validating decode, :class:`FleetMessageError`); :mod:`.quant` its int8 descriptor and
  :mod:`.cdr` its size on the wire;
* :mod:`.peers`   - :class:`PeerRegistry`: which peers' keyframes were accepted, rejections per
  kind, byte rates for ``/diagnostics``;
* :mod:`.catchup` - late joiners: the request message and the rate-limited re-publishing
  (:class:`ReplayScheduler`);
* :mod:`.policy`  - search exclusions per robot and consistency chains per peer.

Nothing here imports rclpy; the node converts messages with :func:`fill_cloud` and passes
received messages (any object with PointCloud2's attributes) to :meth:`PeerRegistry.receive`.
"""

from .catchup import CatchUpRequest, ReplayScheduler, RequestTimer, TokenBucket
from .peers import PeerRegistry, RateMeter
from .policy import PeerChains, fleet_eligible
from .wire import (
    KINDS,
    MAX_MESSAGE_BYTES,
    FleetMessageError,
    ModelIdentity,
    SharedFeatures,
    SharedKeyframe,
    WireMessage,
    decode,
    encode,
    fill_cloud,
    max_features_within,
)

__all__ = [
    "KINDS", "MAX_MESSAGE_BYTES", "CatchUpRequest", "FleetMessageError", "ModelIdentity", "PeerChains",
    "PeerRegistry", "RateMeter", "ReplayScheduler", "RequestTimer", "SharedFeatures", "SharedKeyframe",
    "TokenBucket", "WireMessage", "decode", "encode", "fill_cloud", "fleet_eligible", "max_features_within",
]
