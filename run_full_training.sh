#!/usr/bin/env bash
# The whole pipeline: preprocess (COCO PU split, prints pi) -> train (--use-data-prior; prints pi and the
# test patch metrics) -> pick the test micrographs -> evaluate the picks.
#
#   ./run_full_training.sh                                   # bundled demo: synthetic micrographs, minutes on a CPU
#   ./run_full_training.sh --data-root DIR [--config configs/pu_full_fixed.yaml] [--exp-name NAME]
#
# Options: --data-root DIR (CryoTransformer layout), --config YAML, --exp-name NAME, --chunks-dir DIR
# (the preprocessing output, your big disk), --experiments-dir DIR (default experiments), --device cuda|cpu,
# --num-workers N, --expected-particles N (particles per micrograph, labeled or not: sets pi on your data),
# --redo-preprocessing (start the chunks over, e.g. after changing the data root or config); demo only:
# --synthetic-dir DIR (default data/synthetic) and --synthetic-args "FLAGS" (to make_synthetic_dataset.py).
# Every stage checks its own outputs: a rerun skips finished stages and resumes an interrupted one.
# Logs: experiments/<exp-name>/logs/<stage>.log
set -euo pipefail
CALLER_DIR=$PWD
abs() { if [[ "$1" = /* ]]; then echo "$1"; else echo "${CALLER_DIR}/$1"; fi; }  # paths given by the user
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

DATA_ROOT="" CONFIG="" EXP_NAME="" CHUNKS_DIR="" DEVICE="" NUM_WORKERS=2 EXPECTED="" EXPERIMENTS=experiments
SYNTHETIC_DIR=data/synthetic SYNTHETIC_ARGS="" REDO_FLAG=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT=$(abs "$2"); shift 2 ;;
    --config) CONFIG=$(abs "$2"); shift 2 ;;
    --exp-name) EXP_NAME=$2; shift 2 ;;
    --chunks-dir) CHUNKS_DIR=$(abs "$2"); shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --num-workers) NUM_WORKERS=$2; shift 2 ;;
    --expected-particles) EXPECTED=$2; shift 2 ;;
    --experiments-dir) EXPERIMENTS=$(abs "$2"); shift 2 ;;
    --synthetic-dir) SYNTHETIC_DIR=$(abs "$2"); shift 2 ;;
    --synthetic-args) SYNTHETIC_ARGS=$2; shift 2 ;;
    --redo-preprocessing) REDO_FLAG=(--no-resume); shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The demo's labels are a research split (a third of them hidden again, pi counted); a user's own labels
# are partial: all there is, nothing hidden, no truth read, pi from --expected-particles.
DEMO=0
if [[ -z "$DATA_ROOT" ]]; then
  DEMO=1; DATA_ROOT=$SYNTHETIC_DIR; CONFIG=${CONFIG:-configs/demo.yaml}; EXP_NAME=${EXP_NAME:-demo}
  LABEL_FLAGS=(--labels complete --hide-ratio 0.3)
else
  CONFIG=${CONFIG:-configs/pu_full_fixed.yaml}; EXP_NAME=${EXP_NAME:-$(basename "$DATA_ROOT")_pu}
  LABEL_FLAGS=(--labels partial); [[ -n "$EXPECTED" ]] && LABEL_FLAGS+=(--expected-particles "$EXPECTED")
fi
CHUNKS_DIR=${CHUNKS_DIR:-data/chunks/${EXP_NAME}}
RUN_DIR=${EXPERIMENTS}/${EXP_NAME}
LOGS=${RUN_DIR}/logs
mkdir -p "$LOGS"
DEVICE_FLAG=(); [[ -n "$DEVICE" ]] && DEVICE_FLAG=(--device "$DEVICE")

stage() {  # stage NAME COMMAND...: run with its log; stop the pipeline with the stage's name on failure
  local name=$1; shift
  echo "== stage: ${name}  (log: ${LOGS}/${name}.log)"
  if ! "$@" 2>&1 | tee -a "${LOGS}/${name}.log"; then
    echo "error: stage '${name}' failed; see ${LOGS}/${name}.log, fix it and rerun the same command to resume" >&2
    exit 1
  fi
}
skip() { echo "== stage: $1 already done ($2), skipped"; }

# 0. the bundled default data, generated on first use
if [[ $DEMO == 1 ]]; then
  if [[ -f "${DATA_ROOT}/dataset.json" ]]; then skip synthetic_data "${DATA_ROOT}/dataset.json"
  else
    # shellcheck disable=SC2086  # SYNTHETIC_ARGS is a list of flags
    stage synthetic_data "$PYTHON" make_synthetic_dataset.py --out "$DATA_ROOT" --num-workers "$NUM_WORKERS" \
        $SYNTHETIC_ARGS
  fi
fi

# 1. COCO PU split into chunks. Always run: the tool resumes an interrupted run, says "already complete"
# for a finished one, and refuses chunks made from another data root or config (--redo-preprocessing
# starts them over)
stage preprocess "$PYTHON" preprocess_coco_full_dataset.py --data-root "$DATA_ROOT" --output-dir "$CHUNKS_DIR" \
  --num-workers "$NUM_WORKERS" "${LABEL_FLAGS[@]}" "${REDO_FLAG[@]}"

# 2. training with the data's prior (reruns resume last.pt); it prints the test patch metrics of results.json
if [[ -f "${RUN_DIR}/results.json" ]]; then skip train "${RUN_DIR}/results.json"
else
  stage train "$PYTHON" train_pu_fixed_full.py --config "$CONFIG" --data-dir "$CHUNKS_DIR" --exp-name "$EXP_NAME" \
    --output-root "$EXPERIMENTS" --use-data-prior "${DEVICE_FLAG[@]}"
fi

# 3. picking on the test micrographs (a rerun skips micrographs already picked)
stage pick "$PYTHON" pick_particles.py --checkpoint "${RUN_DIR}/best.pt" --micrographs "${DATA_ROOT}/test" \
  --output-dir "${RUN_DIR}/picks" --overlays 2 "${DEVICE_FLAG[@]}"

# 4. pick-level evaluation against every particle (ground_truth/ when the data has it)
GROUND_TRUTH=${DATA_ROOT}/annotations/instances_test.json
[[ -f "$GROUND_TRUTH" ]] || GROUND_TRUTH=${DATA_ROOT}/particle_coordinates
[[ -d "${DATA_ROOT}/ground_truth" ]] && GROUND_TRUTH=${DATA_ROOT}/ground_truth
if [[ "${RUN_DIR}/pick_eval/summary.json" -nt "${RUN_DIR}/picks/manifest.json" ]]; then
  skip evaluate "${RUN_DIR}/pick_eval/summary.json"
else
  stage evaluate "$PYTHON" evaluate_picks.py --picks "${RUN_DIR}/picks" --ground-truth "$GROUND_TRUTH" \
    --output "${RUN_DIR}/pick_eval/summary.json"
fi

echo
echo "done: ${EXP_NAME}"
echo "  results (patch metrics): ${RUN_DIR}/results.json"
echo "  picks (STAR/CSV/BOX/Topaz per micrograph): ${RUN_DIR}/picks/"
echo "  pick evaluation: ${RUN_DIR}/pick_eval/summary.json"
echo "  TensorBoard: tensorboard --logdir ${EXPERIMENTS}/   (run dir ${RUN_DIR})"
