#!/usr/bin/env bash
# The whole pipeline: preprocess (COCO PU split, prints pi) -> train (--use-data-prior; prints pi and the
# test patch metrics) -> pick the test micrographs -> evaluate the picks.
#
#   ./run_full_training.sh                                   # bundled demo: synthetic micrographs, minutes on a CPU
#   ./run_full_training.sh --data-root DIR [--config configs/pu_full_fixed.yaml] [--exp-name NAME]
#   ./run_full_training.sh --data-root MICROGRAPHS --annotations AutoPick/job006/ [--particle-diameter PX]
#
# Options: --data-root DIR (CryoTransformer layout, or one folder of micrographs), --annotations FILE|DIR
# (your labels in any format the readers take, instead of the layout's annotations/ and particle_coordinates/:
# COCO json, CryoPPP csv, RELION STAR / particles.star / an AutoPick or ManualPick job folder, cryoSPARC .cs,
# crYOLO .cbox, EMAN .box, Topaz txt; they are also the evaluation's ground truth, so unlabeled particles count
# as false picks there), --particle-diameter PX (original px; needed for labels without one: STAR, .cs, Topaz),
# --config YAML, --exp-name NAME, --chunks-dir DIR
# (the preprocessing output, your big disk), --experiments-dir DIR (default experiments), --device cuda|cpu,
# --num-workers N, --expected-particles N (particles per micrograph, labeled or not: sets pi on your data,
# and the pick threshold keeps as many),
# --redo-preprocessing (start the chunks over, e.g. after changing the data root or config); demo only:
# --synthetic-dir DIR (default data/synthetic) and --synthetic-args "FLAGS" (to make_synthetic_dataset.py).
# Every stage checks its own outputs: a rerun skips finished stages and resumes an interrupted one.
# Logs: experiments/<exp-name>/logs/<stage>.log. The test micrographs picked: <data-root>/test/, else the
# test split the preprocessing drew from one folder (listed in experiments/<exp-name>/test_micrographs.txt).
set -euo pipefail
CALLER_DIR=$PWD
abs() { if [[ "$1" = /* ]]; then echo "$1"; else echo "${CALLER_DIR}/$1"; fi; }  # paths given by the user
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

DATA_ROOT="" CONFIG="" EXP_NAME="" CHUNKS_DIR="" DEVICE="" NUM_WORKERS=2 EXPECTED="" EXPERIMENTS=experiments
ANNOTATIONS="" DIAMETER=""
SYNTHETIC_DIR=data/synthetic SYNTHETIC_ARGS="" REDO_FLAG=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT=$(abs "$2"); shift 2 ;;
    --annotations) ANNOTATIONS=$(abs "$2"); shift 2 ;;
    --particle-diameter) DIAMETER=$2; shift 2 ;;
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
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
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
LABELS_FLAG=(); [[ -n "$ANNOTATIONS" ]] && LABELS_FLAG=(--annotations "$ANNOTATIONS")
DIAMETER_FLAG=(); [[ -n "$DIAMETER" ]] && DIAMETER_FLAG=(--particle-diameter "$DIAMETER")

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
    stage synthetic_data "$PYTHON" make_synthetic_dataset.py --output-dir "$DATA_ROOT" --num-workers "$NUM_WORKERS" \
        $SYNTHETIC_ARGS
  fi
fi

# 1. COCO PU split into chunks. Always run: the tool resumes an interrupted run, says "already complete"
# for a finished one, and refuses chunks made from another data root or config (--redo-preprocessing
# starts them over)
stage preprocess "$PYTHON" preprocess_coco_full_dataset.py --data-root "$DATA_ROOT" --output-dir "$CHUNKS_DIR" \
  --num-workers "$NUM_WORKERS" "${LABEL_FLAGS[@]}" "${LABELS_FLAG[@]}" "${DIAMETER_FLAG[@]}" "${REDO_FLAG[@]}"

# 2. training with the data's prior (reruns resume last.pt); it prints the test patch metrics of results.json.
# With training.members > 1 it trains an ensemble: member k in ${RUN_DIR}/member<k>, picked together below
member_checkpoints() {  # best.pt of every member of the run, one per line (the pipeline stops if it cannot tell)
  "$PYTHON" -c 'import sys; from training.members import member_checkpoints
print(*member_checkpoints(sys.argv[1]), sep="\n")' "$RUN_DIR" || exit 1
}
trained() {  # every member has its results.json
  [[ -f "${RUN_DIR}/config.yaml" ]] || return 1
  local checkpoint listed; listed=$(member_checkpoints) || exit 1
  while IFS= read -r checkpoint; do [[ -f "$(dirname "$checkpoint")/results.json" ]] || return 1; done <<< "$listed"
}
if trained; then skip train "${RUN_DIR}/results.json"
else
  stage train "$PYTHON" train_pu_fixed_full.py --config "$CONFIG" --data-dir "$CHUNKS_DIR" --exp-name "$EXP_NAME" \
    --output-root "$EXPERIMENTS" --use-data-prior "${DEVICE_FLAG[@]}"
fi

# 3. picking on the test micrographs (a rerun skips micrographs already picked): test/, else the test split
# of one folder, from the chunks' micrograph table
TEST_MICROGRAPHS=${DATA_ROOT}/test
if [[ ! -d "$TEST_MICROGRAPHS" ]]; then
  TEST_MICROGRAPHS=${RUN_DIR}/test_micrographs.txt
  "$PYTHON" -c 'import json, sys
for m in json.load(open(sys.argv[1]))["micrographs"]:
    if m["split"] == "test" and m.get("status") != "skipped": print(m["path"])' \
    "${CHUNKS_DIR}/metadata.json" > "$TEST_MICROGRAPHS"
fi
PICK_COUNT_FLAG=(); [[ -n "$EXPECTED" ]] && PICK_COUNT_FLAG=(--expected-particles "$EXPECTED")
LISTED=$(member_checkpoints) || exit 1
mapfile -t CHECKPOINTS <<< "$LISTED"
stage pick "$PYTHON" pick_particles.py --checkpoint "${CHECKPOINTS[@]}" --micrographs "$TEST_MICROGRAPHS" \
  --output-dir "${RUN_DIR}/picks" --overlays 2 "${DEVICE_FLAG[@]}" "${PICK_COUNT_FLAG[@]}"

# 4. pick-level evaluation against every particle (ground_truth/ when the data has it), else the labels
GROUND_TRUTH=${DATA_ROOT}/annotations/instances_test.json
[[ -f "$GROUND_TRUTH" ]] || GROUND_TRUTH=${DATA_ROOT}/particle_coordinates
[[ -n "$ANNOTATIONS" ]] && GROUND_TRUTH=$ANNOTATIONS
[[ -d "${DATA_ROOT}/ground_truth" ]] && GROUND_TRUTH=${DATA_ROOT}/ground_truth
if [[ "${RUN_DIR}/pick_eval/summary.json" -nt "${RUN_DIR}/picks/manifest.json" ]]; then
  skip evaluate "${RUN_DIR}/pick_eval/summary.json"
else
  stage evaluate "$PYTHON" evaluate_picks.py --picks "${RUN_DIR}/picks" --ground-truth "$GROUND_TRUTH" \
    --output "${RUN_DIR}/pick_eval/summary.json" "${DIAMETER_FLAG[@]}"
fi

echo
echo "done: ${EXP_NAME}"
echo "  results (patch metrics): ${RUN_DIR}/results.json"
echo "  picks (STAR/CSV/BOX/Topaz per micrograph): ${RUN_DIR}/picks/"
echo "  pick evaluation: ${RUN_DIR}/pick_eval/summary.json"
echo "  TensorBoard: tensorboard --logdir ${EXPERIMENTS}/   (run dir ${RUN_DIR})"
