#!/usr/bin/env bash
# The main job: make the demo rosbag (once) and replay it through the loop detector, printing the
# metrics table and the paths of the plots.
#
#   scripts/demo.sh                                   # random ViT-S model: checks the pipeline, metrics meaningless
#   WEIGHTS=path/to/dino_salad.ckpt scripts/demo.sh   # the released SALAD model (ViT-B, 322 px)
#
# Without WEIGHTS and without an NVIDIA GPU the random model is exported to ONNX once (demo_out/), verified
# against PyTorch in onnxruntime and OpenVINO (fp32, and bf16 where the CPU has it) and timed; the replay
# then runs the fastest verified path (say which and why), falling back to torch fp32 if any of that fails.
# DEMO_BACKEND=torch skips the export and runs torch fp32.
#
# DEMO_ROBOTS=2 (or more) makes the bags of further robots driving the same city (salad_demo_bag --robot N) and
# replays them together as a fleet: keyframes shared as on the fleet topic, intra- and inter-robot metrics.
#
# Environment: DEMO_OUT (default demo_out/), DEMO_FRAMES (default 160, only when a bag is made), DEMO_ROBOTS (1).
# Extra arguments go to salad_replay, e.g. scripts/demo.sh --set detector.min_score=0.6
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
robots="${DEMO_ROBOTS:-1}"
if ! [[ "$robots" =~ ^[1-9][0-9]?$ ]]; then  # before anything is installed or rendered
  echo "[demo] DEMO_ROBOTS=$robots: give a number of robots from 1 to 99" >&2
  exit 2
fi
"$root/scripts/setup.sh"
source "$root/scripts/ros_env.sh"
bin="$root/.venv/bin"
out="${DEMO_OUT:-$root/demo_out}"
bag="$out/demo_bag"
mkdir -p "$out"

# metadata.yaml is written last: without it the bag is an interrupted run, so make it again; a bag made by an
# older version (no camera_info/depth topics) is made again too.
if [ ! -f "$bag/metadata.yaml" ] || ! grep -q /camera/depth/image_raw "$bag/metadata.yaml"; then
  rm -rf "$bag"
  echo "[demo] rendering the demo bag (two laps around a city block, the second at dusk) into $bag"
  "$bin/salad_demo_bag" "$bag" --frames "${DEMO_FRAMES:-160}" --seed 0
else
  echo "[demo] using the existing demo bag $bag (delete it to make it again)"
fi
bags=("$bag")
for ((n = 1; n < robots; n++)); do
  other="$out/demo_bag_robot$n"
  if [ ! -f "$other/metadata.yaml" ]; then
    echo "[demo] rendering robot $n's bag (same city, another start, direction and time of day) into $other"
    "$bin/salad_demo_bag" "$other" --frames "${DEMO_FRAMES:-160}" --seed 0 --robot "$n"
  fi
  bags+=("$other")
done

if [ -n "${WEIGHTS:-}" ]; then
  if [ ! -f "$WEIGHTS" ]; then
    echo "[demo] WEIGHTS=$WEIGHTS: no such file" >&2
    exit 2
  fi
  results="$out/replay"
  echo "[demo] model: SALAD checkpoint $WEIGHTS, DINOv2 ViT-B/14 at 322 px, every 2nd frame (about a minute on 2 idle CPU cores)"
  model=(--weights "$WEIGHTS" --backbone dinov2_vitb14 --image-size 322 --every 2)
else
  results="$out/replay_random"
  cat <<'MSG'
[demo] model: NO WEIGHTS GIVEN - a RANDOMLY INITIALISED DINOv2 ViT-S/14 + SALAD at 224 px.
[demo]   This shows that the whole pipeline runs (bag reading, batched inference, keyframes, loop search,
[demo]   metrics, plots); the descriptors are meaningless, so the metrics are NOT a measure of SALAD.
[demo]   Random descriptors of neighbouring frames are nearly identical, so the novelty rule
[demo]   (detector.keyframe_max_similarity) is switched off here to keep every frame as a keyframe.
[demo]   For real numbers: WEIGHTS=path/to/dino_salad.ckpt scripts/demo.sh
MSG
  model=(--allow-random-weights --backbone dinov2_vits14 --image-size 224 --set detector.keyframe_max_similarity=1.0)
  if [ "${DEMO_BACKEND:-auto}" = torch ]; then
    echo "[demo] inference: torch fp32 (DEMO_BACKEND=torch)"
  elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    echo "[demo] inference: torch on the GPU (device auto)"
  else
    onnx="$out/salad_vits14_224_random.onnx"
    report="$onnx.openvino.json"
    if [ ! -f "$onnx" ] || [ ! -f "$report" ]; then
      echo "[demo] no GPU: exporting the model to ONNX once and verifying it in onnxruntime and OpenVINO ($onnx)"
      if ! (cd "$root" && "$bin/python" -m export.onnx --random-weights --backbone dinov2_vits14 --image-size 224 --out "$onnx" \
          --check-openvino --quiet); then
        echo "[demo] the export or its verification failed (see above): using torch fp32 instead"
      fi
    fi
    IFS=$'\t' read -r path why < <(cd "$root" && "$bin/python" -m export.openvino_check choose "$report")
    case "$path" in
      openvino-bf16|openvino-fp32)
        model+=(--set backend=openvino --set "engine=$onnx" --set "precision=${path#openvino-}") ;;
      *) path=torch-fp32 ;;
    esac
    echo "[demo] inference: $path: $why"
  fi
fi

# camera_info + aligned depth: loop candidates get relative poses, scored against the ground truth. The demo's
# odometry is the camera's position with its heading (x forward, z up): camera_to_base turns the optical frame
# into it, so poses are reported, and scored, between the keyframes' base frames.
pose=(--camera-info-topic /camera/camera_info --depth-topic /camera/depth/image_raw
      --set "camera_to_base=0 0 0 -0.5 0.5 -0.5 0.5")
if [ "$robots" -gt 1 ]; then
  results="${results}_fleet$robots"
  echo "[demo] replaying $robots robots as a fleet (one pipeline each, keyframes shared as on /salad_fleet/keyframes)"
  # the other robots drive their first lap the other way round: a forward camera then sees other facades
  # at the same spot, which no image-based loop detector should call a loop
  echo "[demo] true loops: within 5 m and headings within 60 deg (--max-yaw 60)"
  pose+=(--max-yaw 60)
fi
"$bin/salad_replay" "${bags[@]}" --image-topic /camera/image_raw --gt-topic /odom "${model[@]}" "${pose[@]}" \
  --out "$results" "$@"
echo "[demo] done in $(( $(date +%s) - start )) s"
