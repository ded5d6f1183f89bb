#!/usr/bin/env bash
# The GPU path in one prepared script: at most ~8 minutes on one GPU, no internet (--pretrained
# none; ChairV2 when $FGSBIR_DATA/ChairV2 exists, else the embedded dataset, generated here).
#
#   bash benchmarks/gpu_check.sh          # on a CUDA machine
#   bash benchmarks/gpu_check.sh --cpu    # the same checks with tiny settings on a CPU (tests/test_gpu_path.py)
#
# 1. training steps for vgg16 and the light backbones in float32, --amp bf16 and --amp fp16:
#    steps/s, peak GPU memory, host reads (synchronisations) per step, evaluation encode + distances;
# 2. the evaluation's seconds per query at ChairV2's size (323 x 100, 16 nodes, D = 512) beside
#    the paper's 0.67 s, and the head's share of the GPU's float32 matmul throughput;
# 3. main.py end to end under --amp (fp16 on a GPU: the GradScaler's state is checkpointed), resumed;
# 4. the GPU checkpoint evaluated on the CPU, and evaluate.py --amp bf16.
# Outputs go to $GPU_CHECK_OUT (default: a new folder under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
if [[ "${1:-}" == "--cpu" ]]; then
  DEVICE=cpu
  TRAIN=(--backbones resnet18_light vgg16 --amps bf16 --batch_size 2 --image_size 32 --dim 32 --steps 1)
  EVAL=(--queries 8 --gallery 20 --dim 64)
  DATA=(--data_root "$OUT/data" --synthetic_size train_photos=4 test_photos=3 sketches_per_photo=2)
  RUN=(--image_size 64 --dim 32 --att_dim 8 --batch_size 4 --workers 0)
  AMP=bf16; STEPS=2; MORE=3
else
  DEVICE=cuda
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device (use --cpu)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  TRAIN=(--backbones vgg16 resnet18_light mobilenet_v2 efficientnet_lite0 --amps none bf16 fp16 --steps 10)
  EVAL=()
  if [[ -n "${FGSBIR_DATA:-}" && -d "${FGSBIR_DATA}/ChairV2" ]]; then
    DATA=(--dataset ChairV2 --data_root "$FGSBIR_DATA")
  else
    DATA=(--data_root "$OUT/data")
  fi
  RUN=(--backbone vgg16 --workers 8)
  AMP=fp16; STEPS=20; MORE=30
fi
python -c "import torch; print('torch', torch.__version__)"
echo "== 1. training and evaluation steps per backbone and precision ($DEVICE)"
python benchmarks/gpu_check.py train --device "$DEVICE" "${TRAIN[@]}"
echo "== 2. evaluation at ChairV2's size"
python benchmarks/gpu_check.py eval --device "$DEVICE" "${EVAL[@]}"
echo "== 3. main.py end to end with --amp $AMP, then resumed"
python main.py "${DATA[@]}" "${RUN[@]}" --pretrained none --device "$DEVICE" --amp "$AMP" \
    --max_steps "$STEPS" --eval_every "$STEPS" --output_dir "$OUT/runs" --run_name amp
python main.py --resume "$OUT/runs/amp" --max_steps "$MORE"
echo "== 4. the $DEVICE checkpoint evaluated on the CPU, and on $DEVICE with --amp bf16"
python evaluate.py --checkpoint "$OUT/runs/amp/last.pth" --device cpu
python evaluate.py --checkpoint "$OUT/runs/amp/last.pth" --device "$DEVICE" --amp bf16
echo "gpu_check: all checks passed ($OUT)"
