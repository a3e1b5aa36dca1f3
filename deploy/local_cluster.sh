#!/usr/bin/env bash
# Start a one-node Ray cluster (token auth, loopback) for `ray job submit`, sized to this machine's GPUs.
set -euo pipefail
export RAY_AUTH_MODE=token
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
ray start --head --node-ip-address=127.0.0.1 --num-gpus="$gpus" --disable-usage-stats
echo "submit with: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\"
echo "    python -m orchestration.train --config configs/coco_det.yaml"
