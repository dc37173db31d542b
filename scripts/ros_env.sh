# Sourced by the project's scripts: keep DDS discovery on this machine and off other runs.
# Kilted ignores ROS_LOCALHOST_ONLY; ROS_AUTOMATIC_DISCOVERY_RANGE is the switch that works.
# A fresh random domain every time, unless SALAD_KEEP_DOMAIN=1 keeps an inherited ROS_DOMAIN_ID
# (the same flag as salad_ros.ros_env.ensure_local_ros_env for Python processes).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
if [ "${SALAD_KEEP_DOMAIN:-0}" != 1 ] || [ -z "${ROS_DOMAIN_ID:-}" ]; then
  export ROS_DOMAIN_ID=$(( (RANDOM % 100) + 1 ))
fi
