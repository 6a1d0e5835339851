#!/usr/bin/env bash
# One call on a machine with a CUDA GPU, under 9 minutes: the frontier's key points at GPU scale, then the
# throughput benchmark with and without torch.compile. Everything lands in one folder ($OUT, default
# gpu-check/): results.json of the study, the benchmark's JSON and text, the machine's description.
#
#   benchmarks/gpu_check.sh                          # needs topoat, pyautoattack and Fashion-MNIST
#   FMNIST_DIR=carry/fashion-mnist PYTHONPATH=carry:src OUT=/tmp/gpu benchmarks/gpu_check.sh
#   GPU_CHECK_QUICK=1 benchmarks/gpu_check.sh        # a CPU rehearsal with tiny sizes (about 2 minutes)
#
# Frontier points (studies/fashion-mnist-gpu.yaml): all of Fashion-MNIST, preact-resnet18, PGD-10 (eps 0.1,
# step 0.025), bf16 on CUDA, one seed; a standard teacher, PGD-AT, PGD-AT + TRAIN (the verdict's variant) and
# PGD-AT + logit distillation (the control), each evaluated on 1,000 test images with natural accuracy and
# AutoAttack's APGD-CE + APGD-T. Each stage has its own time limit, so a slow one cannot starve the rest; the
# study resumes if the script is run again with the same $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
started=$(date +%s)
stage() { echo "[gpu_check $(( $(date +%s) - started ))s] $*" | tee -a "$OUT/log.txt"; }

if [ -n "${GPU_CHECK_QUICK:-}" ]; then
  DEVICE=cpu
  STUDY_SET=(--set data.train_subset=512 --set optim.epochs=1 --set model.arch=small-cnn --set evaluation.n=64
             --set validation.n=64 --set attack.steps=2 --set optim.batch_size=64)
  BENCH=(--device cpu --quick --modes pgd-at,pgd-at+train --batch-sizes 32 --graph-sizes 128)
  LIMITS=(300 120 120)
  COMPILE_MODELS=small-cnn
  COMPILE_MODE=${COMPILE_MODE:-default}
else
  DEVICE=cuda
  STUDY_SET=()
  BENCH=(--device cuda --amp bf16 --batch-size 512)
  LIMITS=(360 90 80)
  COMPILE_MODELS=preact-resnet18
  COMPILE_MODE=${COMPILE_MODE:-reduce-overhead}  # CUDA graphs: every training batch has one shape
fi

{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; } > "$OUT/machine.txt" 2>&1

resume=(); [ -d "$OUT/frontier" ] && resume=(--resume)
stage "frontier key points (limit ${LIMITS[0]}s)"
timeout "${LIMITS[0]}" $PY -m topoat study studies/fashion-mnist-gpu.yaml --out "$OUT/frontier" "${resume[@]}" \
  --no-progress --set data.root="$FMNIST_DIR" --set runtime.device=$DEVICE "${STUDY_SET[@]}" \
  > "$OUT/frontier.txt" 2>&1
stage "frontier exit $? ($(tail -n 1 "$OUT/frontier.txt"))"

stage "throughput, eager (limit ${LIMITS[1]}s)"
timeout "${LIMITS[1]}" $PY benchmarks/throughput.py "${BENCH[@]}" --json "$OUT/throughput.json" \
  > "$OUT/throughput.txt" 2>&1
stage "throughput exit $?"

stage "throughput, torch.compile ($COMPILE_MODE), PGD-AT (+ TRAIN) of $COMPILE_MODELS (limit ${LIMITS[2]}s)"
timeout "${LIMITS[2]}" $PY benchmarks/throughput.py "${BENCH[@]}" --compile --compile-mode "$COMPILE_MODE" \
  --models $COMPILE_MODELS --modes pgd-at,pgd-at+train \
  --batch-sizes "" --graph-sizes "" --json "$OUT/throughput-compile.json" > "$OUT/throughput-compile.txt" 2>&1
stage "throughput (compile) exit $?"
stage "done: $OUT"
