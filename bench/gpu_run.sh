#!/usr/bin/env bash
# The one command to hand a lent GPU (#42): every GPU figure the project needs, in at most 480 s of sections.
#
#   bash bench/gpu_wheels.sh && mkdir -p .gpu && cp ../shared/bench/trainer_baseline.py .gpu/   # here, first
#   bash bench/gpu_run.sh            # there, through the device tool: carry [".whl", ".gpu"], timeout_s 600
#   bash bench/gpu_run.sh --dry-run  # the same sections in their CPU mode, toy sizes (CI runs it)
#
# On the GPU machine the wheels in .whl/ are installed offline (the image lacks optuna and datasets; nothing
# downloads there). Each section runs in a process of its own under its budget (printed as `budget N s`): a
# section that breaks the CUDA state, or runs long, costs only itself. Results go to $OUT (the device tool brings
# that folder back), else bench/out/gpu; put the figures in bench/results/GPU.md with the device's name.
#   probe       versions, SDPA kernels, the graphed learning rate, a forced failed capture, launches per MiniLM step
#   precisions  a MiniLM trial in each precision, with and without CUDA graphs (on or off recorded), against Trainer
#   lora7b      a 7B LoRA trial from Llama-7B-shaped slices: precision auto's choice, peak memory
#   memory      memory given back after pruned trials; a 128k-vocabulary decoder's evaluation
#   fused       fused trials at K = 1, 4, 16: trials an hour and the launches of a member's step
set -uo pipefail
cd "$(dirname "$0")/.."
dry=
[ "${1:-}" = "--dry-run" ] && dry=1
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
if [ -z "$dry" ]; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
reduced=${dry:+--reduced}
total=0
failed=0

section() {  # section NAME BUDGET_S COMMAND...
  local name=$1 budget=$2
  shift 2
  total=$((total + budget))
  echo "[gpu_run] $name: budget $budget s"
  local start=$SECONDS limit=$budget
  [ -n "$dry" ] && limit=$((budget * 4))  # a CPU's toy run, beside other work: the budgets are the GPU's
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "[gpu_run] $name: exit $code after $((SECONDS - start)) s ($out/$name.log)"
  [ "$code" -eq 0 ] || failed=$((failed + 1))
}

section probe 80 "$py" -m bench.gpu_probe --out "$out/probe.json"
section precisions 150 "$py" -m bench.gpu --only precisions $reduced --anchor .gpu/trainer_baseline.py \
  --out "$out/GPU_precisions.md" --json "$out/gpu_precisions.json"
section lora7b 70 "$py" -m bench.gpu --only lora7b $reduced --out "$out/GPU_lora7b.md" --json "$out/gpu_lora7b.json"
if [ -n "$dry" ]; then  # the 128k evaluation, the LoRA members' memory and a fused study equal to one trial at a
  # time (tests/study/test_fused_study.py) have CPU tests of their own
  section memory 50 "$py" -m bench.gpu --only memory --reduced --out "$out/GPU_memory.md" --json "$out/gpu_memory.json"
  section fused 130 "$py" -m bench.fused --reduced --ks 2 --memory-ks "" --launch-ks 1,2 --out "$out/FUSED.md"
else
  section memory 50 "$py" -m bench.gpu --only memory,vocab128k --out "$out/GPU_memory.md" --json "$out/gpu_memory.json"
  section fused 130 "$py" -m bench.fused --models random-minilm --ks 1,4,16 --memory-ks "" --launch-ks 1,4,16 \
    --out "$out/FUSED.md"
fi
echo "[gpu_run] sections' budgets: $total s (at most 480); $failed failed"
[ "$total" -le 480 ] || exit 3
exit "$failed"
