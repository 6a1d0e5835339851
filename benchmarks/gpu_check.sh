#!/usr/bin/env bash
# One call on a machine with a CUDA GPU, within a fixed budget (under 10 minutes): the throughput benchmark
# eager, then with torch.compile, then the frontier's key points at GPU scale in the time left.
# Everything lands in one folder ($OUT, default gpu-check/): the benchmark's JSON and text, the study's
# run folders and results.json, the machine's description and a log of the stages.
#
#   benchmarks/gpu_check.sh                          # needs topoat, pyautoattack and Fashion-MNIST
#   FMNIST_DIR=carry/fashion-mnist PYTHONPATH=carry:src OUT=/tmp/gpu benchmarks/gpu_check.sh
#   GPU_CHECK_QUICK=1 benchmarks/gpu_check.sh        # a CPU rehearsal with tiny sizes (a few minutes)
#   GPU_CHECK_STAGES=study benchmarks/gpu_check.sh   # only some stages (default: eager,compile,study)
#   CIFAR_ROOT=carry/cifar-10-jpg.tar.gz GPU_CHECK_STAGES=cifar benchmarks/gpu_check.sh   # CIFAR-10, its own call
#   GPU_CHECK_STAGES=frontier-preact benchmarks/gpu_check.sh   # the PreAct frontier, its own calls (resumes)
#
# Frontier points (studies/fashion-mnist-gpu.yaml): all of Fashion-MNIST, preact-resnet18, PGD-10 (eps 0.1,
# step 0.025), bf16 on CUDA, one seed; a standard teacher, PGD-AT, PGD-AT + TRAIN (the verdict's variant, then
# lambda 2) and PGD-AT + logit distillation (the control), each evaluated on 1,000 test images with natural accuracy and
# AutoAttack's APGD-CE + APGD-T. The benchmarks come first, as their time is known; the study gets what is
# left of the budget (the whole study needs about 8 minutes alone on an H200, so a call that also runs
# the benchmarks finishes part of it) and resumes if the script is run again with the same $OUT.
#
# CIFAR-10 (JPEG copy) stage (studies/cifar10-jpg-gpu.yaml, asked for by name: it needs the whole budget):
# PreAct ResNet-18 at full width, PGD-10 (8/255, step 2/255), 15 epochs, a standard teacher, PGD-AT and
# PGD-AT + TRAIN (topology's defaults), natural and APGD-CE + APGD-T on 1,000 test images. Carry the
# 19 MB tarball (../shared/datasets/cifar-10-jpg.tar.gz) and point CIFAR_ROOT at it.
#
# PreAct frontier stage (studies/frontier-preact.yaml, asked for by name): the frontier study with PreAct
# ResNet-18 (width 16) on the Fashion-MNIST frontier schedule, 3 seeds, 42 runs, natural and APGD-CE +
# APGD-T on 1,000 test images. More than one budget: each call resumes the study in $OUT/frontier-preact.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
CIFAR_ROOT=${CIFAR_ROOT:-../shared/datasets/cifar-10-jpg.tar.gz}
export PYTHONUNBUFFERED=1  # a stage stopped at its limit keeps every line it printed
mkdir -p "$OUT"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
stage() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$OUT/log.txt"; }
STAGES=${GPU_CHECK_STAGES:-eager,compile,study}
wanted() { [[ ",$STAGES," == *",$1,"* ]]; }

if [ -n "${GPU_CHECK_QUICK:-}" ]; then
  DEVICE=cpu
  STUDY_SET=(--set data.train_subset=512 --set optim.epochs=1 --set model.arch=small-cnn --set evaluation.n=64
             --set validation.n=64 --set attack.steps=2 --set optim.batch_size=64)
  CIFAR_SET=(--set data.train_subset=256 --set optim.epochs=1 --set 'model.args={width: 4}' --set evaluation.n=32
             --set validation.n=32 --set attack.steps=2 --set optim.batch_size=64)
  PREACT_SET=(--set data.train_subset=256 --set optim.epochs=1 --set 'model.args={width: 4}' --set evaluation.n=32
              --set validation.n=32 --set attack.steps=2 --set optim.batch_size=64 --runs '*-s0')
  BENCH=(--device cpu --quick --modes pgd-at,pgd-at+train --graph-sizes 128)
  SCALING=(--batch-sizes 16,32)
  COMPILE_SCALING=(--batch-sizes 16)
  BUDGET=${GPU_CHECK_BUDGET:-600}; EAGER_LIMIT=120; COMPILE_LIMIT=200
  COMPILE_MODELS=small-cnn
  COMPILE_MODE=${COMPILE_MODE:-default}
else
  DEVICE=cuda
  STUDY_SET=()
  CIFAR_SET=()
  PREACT_SET=()
  BENCH=(--device cuda --amp bf16 --batch-size 512 --repeats 2)  # GPU timings are steady: 2 rounds fit the budget
  # batch 128 against 512 for both models: the launch-bound share of a step
  SCALING=(--batch-sizes 128,512 --scaling-models small-cnn,preact-resnet18)
  COMPILE_SCALING=(--batch-sizes 128 --scaling-models small-cnn,preact-resnet18)  # what CUDA graphs do there
  BUDGET=${GPU_CHECK_BUDGET:-560}; EAGER_LIMIT=120; COMPILE_LIMIT=180
  COMPILE_MODELS=small-cnn,preact-resnet18  # the launch-bound model first: its compile is short
  COMPILE_MODE=${COMPILE_MODE:-reduce-overhead}  # CUDA graphs: every training batch has one shape
fi

{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; } > "$OUT/machine.txt" 2>&1

if wanted eager; then
  stage "throughput, eager (limit ${EAGER_LIMIT}s)"
  timeout "$EAGER_LIMIT" $PY benchmarks/throughput.py "${BENCH[@]}" "${SCALING[@]}" --json "$OUT/throughput.json" \
    > "$OUT/throughput.txt" 2>&1
  stage "throughput exit $?"
fi

if wanted compile; then
  stage "throughput, torch.compile ($COMPILE_MODE), PGD-AT (+ TRAIN) of $COMPILE_MODELS (limit ${COMPILE_LIMIT}s)"
  timeout "$COMPILE_LIMIT" $PY benchmarks/throughput.py "${BENCH[@]}" --compile --compile-mode "$COMPILE_MODE" \
    --models $COMPILE_MODELS --modes pgd-at,pgd-at+train "${COMPILE_SCALING[@]}" --graph-sizes "" \
    --json "$OUT/throughput-compile.json" > "$OUT/throughput-compile.txt" 2>&1
  stage "throughput (compile) exit $?"
fi

# study_stage NAME SPEC DESCRIPTION ROOT [--set ...]: a study in what is left of the budget, resumed
# if an earlier call of the script left its folder.
study_stage() {
  local name=$1 spec=$2 what=$3 root=$4; shift 4
  local left=$(( BUDGET - $(elapsed) ))
  [ "$left" -gt 30 ] || { stage "$name skipped: ${left}s left"; return; }
  local resume=(); [ -d "$OUT/$name" ] && resume=(--resume)
  stage "$what (limit ${left}s, what is left of ${BUDGET}s)"
  timeout "$left" $PY -m topoat study "$spec" --out "$OUT/$name" "${resume[@]}" \
    --no-progress --set data.root="$root" --set runtime.device=$DEVICE "$@" > "$OUT/$name.txt" 2>&1
  stage "$name exit $? ($(tail -n 1 "$OUT/$name.txt"))"
}

if wanted study; then
  study_stage frontier studies/fashion-mnist-gpu.yaml "frontier key points" "$FMNIST_DIR" "${STUDY_SET[@]}"
fi
if wanted cifar; then
  study_stage cifar10-jpg studies/cifar10-jpg-gpu.yaml "CIFAR-10 (JPEG copy): standard, PGD-AT, PGD-AT + TRAIN" \
    "$CIFAR_ROOT" "${CIFAR_SET[@]}"
fi
if wanted frontier-preact; then
  study_stage frontier-preact studies/frontier-preact.yaml "PreAct ResNet-18 frontier on Fashion-MNIST, 3 seeds" \
    "$FMNIST_DIR" "${PREACT_SET[@]}"
fi
stage "done: $OUT"
