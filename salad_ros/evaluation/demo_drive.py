"""The demo bag's drive (:mod:`.demo_bag`): who drives where, when and under which light.

Robot 0 is the demo's original camera: two laps counter-clockwise around the block from the
start of the route (arc length 0), lap 1 at noon (:data:`DAY`) in the middle of the street, lap 2
at dusk (:data:`DUSK`) shifted sideways, a little higher and slower.

Robot ``N >= 1`` is another robot of a fleet in the same city and the same world frame (its
odometry is directly comparable with robot 0's), following :func:`robot_plan`:

* it starts elsewhere: at ``0.25 + 0.5 * frac(N * 0.618...)`` of the route (golden-ratio steps,
  so starts of different robots spread out, always 25-75 % of the route away from robot 0's);
* its first lap runs the other way round (clockwise, camera facing the way it drives, in the
  lane on the block's side); then it makes a U-turn on the spot where it started and drives its
  second lap counter-clockwise, like robot 0. Place recognition compares what a camera sees, and
  a street seen from the opposite direction shows other facades: so robot N's first lap covers
  robot 0's places but cannot be matched to them, while its second lap sees them from robot 0's
  direction, which is what makes loops between robots findable (and the first lap a test that
  none is claimed where there is none);
* the U-turn is a half circle from the lap-1 lane to the lap-2 lane (in arc length and lateral
  offset along the route), its speed easing from lap 1's to lap 2's: the position never jumps and
  the heading turns by 180 degrees over about 3.5 m (under 2 s);
* other times of day (:data:`FLEET_LIGHTS`: morning, overcast, evening; cycled with ``N``), other
  lanes and another camera height, all inside the 8 m street;
* its stamps start ``N * 0.25 s`` after robot 0's: the robots drive at the same time, as a fleet
  does, so interleaving their messages by stamp is meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..database import Pose

if TYPE_CHECKING:
    from .demo_bag import Scene

SPEEDS = (2.0, 1.8)  # m/s on lap 1 and lap 2


@dataclass
class Light:
    """Illumination of one lap."""

    sun_azimuth: float  # rad
    sun_elevation: float  # rad
    ambient: float
    diffuse: float
    tint: tuple[float, float, float]  # RGB gain
    gamma: float
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    noise: float  # sensor noise sigma (grey levels)
    name: str = ""  # time of day, for summaries


DAY = Light(math.radians(35), math.radians(55), 0.55, 0.5, (1.0, 1.0, 1.0), 1.0, (70, 120, 200), (185, 210, 235), 2.0,
            "noon")
DUSK = Light(math.radians(215), math.radians(12), 0.32, 0.45, (1.12, 0.86, 0.66), 1.25, (40, 45, 95), (235, 150, 90), 4.5,
             "dusk")
# The fleet's other times of day: low eastern sun with a golden cast; flat, dim grey
# light (ambient, almost no sun) under a pale sky; low western sun under a violet sky, darker,
# a pink cast (dusk is orange).
MORNING = Light(math.radians(100), math.radians(20), 0.45, 0.6, (1.05, 0.98, 0.88), 0.9, (110, 150, 205), (230, 215, 185),
                3.0, "morning")
OVERCAST = Light(math.radians(160), math.radians(40), 0.6, 0.1, (0.9, 0.94, 0.98), 1.2, (135, 140, 150), (175, 178, 185),
                 3.0, "overcast")
EVENING = Light(math.radians(290), math.radians(8), 0.4, 0.45, (1.02, 0.88, 1.0), 1.15, (55, 60, 120), (215, 140, 165),
                3.5, "evening")
#: Lap-1 and lap-2 light of robot N >= 1: entry ``(N - 1) % 3``.
FLEET_LIGHTS = ((MORNING, OVERCAST), (OVERCAST, EVENING), (EVENING, MORNING))
#: Lateral offset (m right of the counter-clockwise driving line: > 0 towards the outer ring) on
#: lap 1 and lap 2, and camera height (m), of robot N >= 1: entry ``(N - 1) % 3``.
FLEET_LANES = ((-1.5, 0.6), (-1.3, 0.9), (-1.7, 0.4))
FLEET_HEIGHTS = (1.35, 1.7, 1.45)
STAMP_OFFSET_NS = 250_000_000  # per robot
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class RobotPlan:
    """Where, which way, how and when one robot drives its two laps."""

    robot: int
    start_fraction: float  # of the route length: arc length where lap 1 starts
    directions: tuple[str, str]  # "clockwise" / "counter-clockwise" per lap
    lights: tuple[Light, Light]
    lanes: tuple[float, float]  # lateral offset per lap (robot >= 1)
    height: float  # camera height (robot >= 1)
    stamp_offset_ns: int


def robot_plan(robot: int) -> RobotPlan:
    """Robot 0 is the original demo; robot N >= 1 another robot of the fleet (module docstring)."""
    if robot < 0:
        raise ValueError(f"robot must be >= 0, got {robot}")
    if robot == 0:
        return RobotPlan(0, 0.0, ("counter-clockwise", "counter-clockwise"), (DAY, DUSK), (0.0, 0.8), 1.5, 0)
    j = (robot - 1) % len(FLEET_LIGHTS)
    return RobotPlan(robot, 0.25 + 0.5 * ((robot * GOLDEN) % 1.0), ("clockwise", "counter-clockwise"),
                     FLEET_LIGHTS[j], FLEET_LANES[j], FLEET_HEIGHTS[j], robot * STAMP_OFFSET_NS)


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


@dataclass
class Drive:
    """Camera pose of robot ``robot`` as a function of time over two laps."""

    scene: Scene
    robot: int = 0
    plan: RobotPlan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = robot_plan(self.robot)

    @property
    def uturn_time(self) -> float:
        """Seconds of the U-turn between the laps of robot N >= 1 (0 for robot 0)."""
        if self.robot == 0:
            return 0.0
        radius = (self.plan.lanes[1] - self.plan.lanes[0]) / 2
        return 2 * math.pi * radius / (SPEEDS[0] + SPEEDS[1])

    @property
    def lap_times(self) -> tuple[float, float]:
        """Seconds of lap 1 (with the U-turn that ends it) and of lap 2."""
        L = self.scene.route_length
        return L / SPEEDS[0] + self.uturn_time, L / SPEEDS[1]

    @property
    def duration(self) -> float:
        return sum(self.lap_times)

    @property
    def start_m(self) -> float:
        """Arc length along the route where the drive starts."""
        return self.plan.start_fraction * self.scene.route_length

    def state(self, t: float) -> tuple[float, float, float, float, int]:
        """(x, y, yaw, camera height, lap 0/1) at time ``t`` seconds."""
        if self.robot:
            return self._fleet_state(t)
        t1, _ = self.lap_times
        L = self.scene.route_length
        if t < t1:
            s, lap = SPEEDS[0] * t, 0
            lateral, dyaw, height = 0.0, math.radians(1.0) * math.sin(2 * math.pi * s / 23.0), 1.5
        else:
            s, lap = L + SPEEDS[1] * (t - t1), 1
            ramp = _smoothstep((s - L) / 8.0)  # ease into the new lane over 8 m: no jump in ground truth
            lateral = ramp * (0.8 + 0.4 * math.sin(2 * math.pi * s / 41.0))
            dyaw = ramp * math.radians(5.0) * math.sin(2 * math.pi * s / 29.0)
            height = 1.5 + 0.1 * ramp
        x, y, heading = self.scene.route(s, lateral)
        return x, y, heading + dyaw, height, lap

    def _fleet_state(self, t: float) -> tuple[float, float, float, float, int]:
        """Robot N >= 1: lap 1 clockwise, a U-turn, lap 2 counter-clockwise (module docstring)."""
        L = self.scene.route_length
        v1, v2 = SPEEDS
        l1, l2 = self.plan.lanes
        s0 = self.start_m
        t_lap1, tu = L / v1, self.uturn_time
        # Yaw wobbles and lane drift are whole half-waves per lap: zero where a lap begins and ends.
        if t < t_lap1:
            d = v1 * t
            s, lateral, turn, lap = s0 - d, l1, math.pi, 0
            dyaw = math.radians(1.5) * math.sin(7 * math.pi * d / L)
        elif t < t_lap1 + tu:
            # Half circle of radius r in (arc length, lateral) from lane l1 to lane l2, the speed
            # along it going linearly from v1 to v2; the heading follows its tangent.
            tau = t - t_lap1
            r = (l2 - l1) / 2
            phi = (v1 * tau + (v2 - v1) * tau * tau / (2 * tu)) / r
            s, lateral, turn, lap = s0 - r * math.sin(phi), (l1 + l2) / 2 - r * math.cos(phi), math.pi + phi, 0
            dyaw = 0.0
        else:
            d = v2 * (t - t_lap1 - tu)
            s, lateral, turn, lap = s0 + d, l2 + 0.2 * math.sin(5 * math.pi * d / L), 0.0, 1
            dyaw = math.radians(2.0) * math.sin(9 * math.pi * d / L)
        x, y, heading = self.scene.route(s, lateral)
        return x, y, heading + turn + dyaw, self.plan.height, lap

    def pose(self, t: float) -> Pose:
        x, y, yaw, h, _ = self.state(t)
        return Pose(x, y, h, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
