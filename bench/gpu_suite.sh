#!/usr/bin/env bash
# Issue 10's GPU measurements in one device run (aimed at about 9 minutes on one H200): training
# through train.py's path beside a plain loop (bench/train_throughput.py), the official
# score_sde_pytorch step in the same run, at batch 128, 512 and 16; sampling, ours and the
# official PC sampler; data loading. JSON lines go to $OUT/<name>.jsonl, the log to $OUT/log.txt.
# Steps run by priority, each under its own time limit; a step that fails or runs out of time
# is noted in the log and the next one runs.
#
# Prepared, not yet run. Before the run, on the development machine, from the main checkout:
#   bash ../shared/bench/device-bundle.sh      # wheels + the official code into .device-bundle/
# then call the device tool with carry [".device-bundle"], timeout_s 595, and the command
#   bash bench/gpu_suite.sh
set -u
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
LOG=$OUT/log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  .device-bundle/whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$LOG" 2>&1
START=$SECONDS

run() { # NAME LIMIT_S COMMAND...: append the command's JSON lines to $OUT/NAME.jsonl
  local name=$1 limit=$2
  shift 2
  echo "== $name at $((SECONDS - START)) s: $*" >>"$LOG"
  timeout "$limit" "$@" >>"$OUT/$name.jsonl" 2>>"$LOG" || echo "!! $name: exit $?" >>"$LOG"
}

OURS="python3 bench/train_throughput.py --config configs/cifar10_ncsnpp_ve.yaml"
OFFICIAL="python3 .device-bundle/official_train_throughput.py --op cuda"
# What the README recommends for GPUs; EMA, gradient clipping (1.0) and the guard stay on.
FAST="trainer.precision=bf16-mixed trainer.compile=default data.num_workers=0"

# 1. batch 128: ours (framework and plain loop), then the official step (builds its CUDA op)
run train_b128 240 $OURS --steps 40 --warmup 10 $FAST
run official_b128 200 $OFFICIAL --batch 128 --steps 40 --warmup 5
# 2. ours in eager fp32 as train.py ran before this change (790 images/s measured), for the
#    overhead of EMA and guard now (framework_over_plain) and the host syncs per step
run train_b128_eager_fp32 90 $OURS --steps 30 --warmup 6 data.num_workers=0
# 3. sampling at equal NFE (PC reverse diffusion + Langevin, 50 steps = 100 NFE) and batch
run sampling 60 python3 bench/sampling_throughput.py --config configs/cifar10_ncsnpp_ve.yaml \
  --batch 256 --samplers pc:reverse_diffusion:langevin:50
run official_sampling 60 $OFFICIAL --batch 256 --sample-steps 50
#    the fast path: CUDA graphs and bf16 (with its sample difference against fp32, same seeds)
run sampling_fast 120 python3 bench/sampling_throughput.py --config configs/cifar10_ncsnpp_ve.yaml \
  --batch 256 --samplers pc:reverse_diffusion:langevin:50 --compile reduce-overhead --bf16
# 4. batch 512 (MFU) and 16 per GPU (launch-bound: 128 over 8 GPUs), the latter with and
#    without CUDA graphs
run train_b512 120 $OURS --steps 15 --warmup 5 --batch 512 $FAST
run official_b512 60 $OFFICIAL --batch 512 --steps 15 --warmup 3
run train_b16 90 $OURS --steps 60 --warmup 10 --batch 16 $FAST
run train_b16_graphs 90 $OURS --steps 60 --warmup 10 --batch 16 $FAST \
  trainer.compile=reduce-overhead
run official_b16 40 $OFFICIAL --batch 16 --steps 60 --warmup 5
# 5. the loader: CIFAR-10-sized tensors and PNG files, 0 / 4 / 8 workers, pinned memory
run data 60 python3 bench/data_throughput.py --images 8192 --workers 0,4,8
echo "== done at $((SECONDS - START)) s" >>"$LOG"
