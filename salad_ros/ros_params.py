"""The bridge from the config dataclasses (:mod:`salad_ros.params`) to ROS 2 parameters.

Every field of :class:`salad_ros.config.SaladConfig` becomes one declared parameter with its
type, description, range and choices; values from the command line or a params file are checked
by the config's own checker first, so errors read the same in the node and the offline tools.
"""

from __future__ import annotations

import sys
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind
from rclpy.qos_overriding_options import QoSOverridingOptions

from .params import ConfigError, ParamSpec, check_value, from_flat_dict, iter_specs, one_line, to_flat_dict

# Policies settable per entity with qos_overrides.<topic>.<publisher|subscription>.<policy>.
QOS_OVERRIDES = QoSOverridingOptions(
    [QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY, QoSPolicyKind.DURABILITY])

# Parameters every rclpy node may receive that are not ours (not refused as unknown).
ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service")

#: Parameters that may change while the node runs: values read at every frame (detector
#: thresholds, keyframe rules, verification thresholds, the pose tolerance, the image size
#: limit). The rest builds the model, the database, the verifier or the subscriptions once at
#: start-up and is read-only.
RUNTIME_PARAMETERS = frozenset({
    "max_image_pixels", "pose_tolerance",
    "detector.keyframe_min_interval_s", "detector.keyframe_min_distance_m", "detector.keyframe_min_rotation_deg",
    "detector.keyframe_max_similarity", "detector.min_score", "detector.top_k",
    "detector.exclude_recent_keyframes", "detector.exclude_recent_s", "detector.exclude_radius_m",
    "detector.consistency_count", "detector.consistency_id_window",
    "detector.verify_ratio", "detector.verify_ransac_px", "detector.verify_min_inliers",
    "detector.verify_min_inlier_ratio",
})


def ros_type(spec: ParamSpec) -> int:
    """ParameterType constant of a spec (arrays typed by their default's elements)."""
    if spec.type is bool:
        return ParameterType.PARAMETER_BOOL
    if spec.type is int:
        return ParameterType.PARAMETER_INTEGER
    if spec.type is float:
        return ParameterType.PARAMETER_DOUBLE
    if spec.type is str:
        return ParameterType.PARAMETER_STRING
    elem = _list_element_type(spec)
    return {
        bool: ParameterType.PARAMETER_BOOL_ARRAY, int: ParameterType.PARAMETER_INTEGER_ARRAY,
        float: ParameterType.PARAMETER_DOUBLE_ARRAY, str: ParameterType.PARAMETER_STRING_ARRAY,
    }[elem]


def _list_element_type(spec: ParamSpec) -> type:
    default = list(spec.default)
    return type(default[0]) if default else str


def _ros_value(spec: ParamSpec, value: Any) -> Any:
    """``value`` (already checked) in the exact Python type rclpy wants for the declared type."""
    if spec.type is list:
        elem = _list_element_type(spec)
        return [elem(v) for v in value]
    return value


def parameter_descriptor(spec: ParamSpec, read_only: bool = True) -> ParameterDescriptor:
    """ROS descriptor of a config spec: type, description, range, choices, and whether it can
    change after start-up (see :data:`RUNTIME_PARAMETERS`)."""
    desc = spec.description
    if spec.choices:
        desc += f" (one of: {', '.join(spec.choices)})"
    if not read_only:
        desc += " [can change while running]"
    d = ParameterDescriptor(description=desc, type=ros_type(spec), read_only=read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range is not None and spec.type is float:
        lo, hi = (max(min(float(v), sys.float_info.max), -sys.float_info.max) for v in spec.range)
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    elif spec.range is not None and spec.type is int:
        lo, hi = (int(max(min(v, 2**63 - 1), -(2**63))) for v in spec.range)
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
    return d


def declare_config(node: Node, cls: type, runtime: frozenset[str] = frozenset()) -> Any:
    """Declare every parameter of config class ``cls`` on ``node`` and build ``cls`` from them;
    the names in ``runtime`` are declared writable, the others read-only.

    Raises :class:`ConfigError` naming the parameter: unknown parameters (ROS's own and
    ``qos_overrides.*`` excepted), values out of range, wrong types.
    """
    specs = iter_specs(cls)
    known = {s.name for s in specs}
    # rclpy keeps the overrides (params files, -p, parameter_overrides) in this attribute.
    overrides: dict[str, Any] = {n: p.value for n, p in getattr(node, "_parameter_overrides", {}).items()}
    unknown = sorted(n for n in overrides
                     if n not in known and n not in ROS_OWN_PARAMETERS and not n.startswith("qos_overrides."))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown parameter '{unknown[0]}'{more}")
    values: dict[str, Any] = {}
    for spec in specs:
        value = check_value(spec, overrides[spec.name]) if spec.name in overrides else spec.default
        try:
            node.declare_parameter(spec.name, _ros_value(spec, value),
                                   parameter_descriptor(spec, read_only=spec.name not in runtime), ignore_override=True)
        except (ParameterException, TypeError, ValueError) as exc:
            raise ConfigError(f"parameter '{spec.name}': {one_line(exc)}") from exc
        values[spec.name] = node.get_parameter(spec.name).value
    return from_flat_dict(cls, values)


def integers_as_doubles(cls: type, params: list[Parameter]) -> list[Parameter]:
    """``params`` with integer values of our float parameters made doubles, as the params-file
    loader accepts them (``ros2 param set node detector.min_score 1`` sends an integer)."""
    floats = {s.name for s in iter_specs(cls) if s.type is float}
    return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
            if p.name in floats and p.type_ == Parameter.Type.INTEGER else p for p in params]


def changed_config(cfg: Any, params: list[Parameter]) -> Any:
    """A new config: ``cfg`` with the values of ``params`` that are its own, checked like values
    at start-up (type, range, choices, cross-field rules). Raises :class:`ConfigError`."""
    specs = {s.name: s for s in iter_specs(type(cfg))}
    values = to_flat_dict(cfg)
    for p in params:
        if p.name in specs:
            values[p.name] = check_value(specs[p.name], p.value)
    return from_flat_dict(type(cfg), values)
