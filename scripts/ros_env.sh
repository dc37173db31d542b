# Sourced by the project's scripts: keep DDS discovery on this machine and off other runs.
# Kilted ignores ROS_LOCALHOST_ONLY; ROS_AUTOMATIC_DISCOVERY_RANGE is the switch that works.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
if [ -z "${ROS_DOMAIN_ID:-}" ] || [ "${SALAD_RANDOM_DOMAIN:-1}" = 1 ]; then
  export ROS_DOMAIN_ID=$(( (RANDOM % 100) + 1 ))
fi
