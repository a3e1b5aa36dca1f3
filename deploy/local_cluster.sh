#!/usr/bin/env bash
# Start a one-node Ray cluster (token auth, loopback) for `ray job submit`, sized to this machine's GPUs.
# Run it inside the project's environment (source .venv/bin/activate): jobs run with this cluster's `python`.
# Extra arguments go to `ray start` (e.g. --block, --dashboard-port=8266, --temp-dir=/tmp/mine).
# Token auth: RAY_AUTH_TOKEN (or the token file `ray get-auth-token --generate` writes) is what `ray job submit`
# must present too, with RAY_AUTH_MODE=token set for both.
set -euo pipefail
export RAY_AUTH_MODE=token
gpus=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
echo "submit with: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\"
echo "    python -m orchestration.train --config configs/coco_det.yaml"
exec ray start --head --node-ip-address=127.0.0.1 --num-gpus="$gpus" --disable-usage-stats "$@"
