#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (torch.distributed.run).
#
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py options...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8 --amp
#
# NUM_PROCS is the number of processes on this node (one per GPU; on a CPU-only machine the
# processes use the gloo backend, see dualopt_mm/compat/cpu_ddp.py). Environment: NNODES (1),
# NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCS [train.py options...]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="$NNODES" \
  --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" \
  --master_port="$PORT" \
  --nproc_per_node="$NPROC" \
  "$TOOLS_DIR/train.py" "$CONFIG" --launcher pytorch "$@"
