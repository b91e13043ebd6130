#!/usr/bin/env bash
# The GPU bars in one run of at most 8 minutes on one H100/H200, machine start included (issue 18):
# every step has its own time limit and they add up to 6 min 20 s; a step that fails or runs out
# does not stop the rest, and each leaves OUT/<step>.log (and .json/.md where it makes one).
#
#   make bench-wheels                         # once, where pip works: the peers' wheels -> benchmarks/wheels/
#   bash benchmarks/gpu_check.sh OUT          # on the GPU machine (its python3 holds torch + CUDA)
#   bash benchmarks/gpu_check.sh OUT --dry-run  # on a CPU at toy sizes (tests/test_gpu_check.py runs this)
#
# With the device tool: run(command="bash benchmarks/gpu_check.sh $OUT", carry=["benchmarks/wheels"],
# timeout_s=480). Steps: device and versions; the CUDA tests; the product cost on ResNet-18 at
# batch 512 and on the transformer (fp32 and TF32, eager and compiled, k = 8); hessian-probe
# against PyHessian, hessian-eigenthings and curvlinops on ResNet-18 (top eigenvalue, trace, SLQ;
# peers with one SLQ probe, scaled); a 1-GPU torchrun spectrum (the NCCL path).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
DRY=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: >"$OUT/steps.txt"
SITE=$(mktemp -d)
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" benchmarks/wheels/*.whl
else
    echo "no peer wheels in benchmarks/wheels/: the peers are reported as not installed" | tee "$OUT/peers.txt"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, go on whatever happens
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit} s): $*" | tee "$OUT/$name.log"
    local started=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    local code=$?
    echo "== $name: exit $code after $((SECONDS - started)) s" | tee -a "$OUT/$name.log" "$OUT/steps.txt"
}

if [ "$DRY" = "--dry-run" ]; then  # toy sizes on the CPU: every step runs, nothing is measured
    DEVICE=cpu; NET=digits-mlp; BATCH=64; TRANSFORMER=digits-mlp; SAMPLES=256; EXTRA=""; LIMIT=120
else
    DEVICE=cuda; NET=resnet18; BATCH=512; TRANSFORMER=transformer-lm; SAMPLES=1024; EXTRA="--tf32 --compile"
    LIMIT=0
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/device.txt" 2>&1
fi
limit() { [ "$LIMIT" -gt 0 ] && echo "$LIMIT" || echo "$1"; }
"$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'python', platform.python_version())" >>"$OUT/device.txt" 2>&1
date -u +"%Y-%m-%dT%H:%M:%SZ" >>"$OUT/device.txt"

step cuda-tests "$(limit 45)" "$PY" -m pytest -q -p no:cacheprovider tests/test_operators.py -k "cuda or host"
step hvp-net "$(limit 90)" "$PY" benchmarks/hvp_cost.py --workload "$NET" --batch-size "$BATCH" --device "$DEVICE" \
    --k 8 $EXTRA --json "$OUT/hvp-net.json"
step hvp-transformer "$(limit 60)" "$PY" benchmarks/hvp_cost.py --workload "$TRANSFORMER" --device "$DEVICE" \
    --k 8 $EXTRA --json "$OUT/hvp-transformer.json"
step compare-net "$(limit 135)" "$PY" benchmarks/compare.py --workload "$NET" --device "$DEVICE" \
    --samples "$SAMPLES" --batch-size "$BATCH" --tools hessian-probe,pyhessian,eigenthings,curvlinops \
    --peer-probes 1 --timeout 40 --trace-products 32 --json "$OUT/compare-net.json" --markdown "$OUT/compare-net.md"
step checkpoint "$(limit 20)" "$PY" -c "from hessian_probe.demo import train_digits_mlp; \
train_digits_mlp('$OUT/checkpoint.pt')"
step torchrun-spectrum "$(limit 30)" "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 \
    -m hessian_probe spectrum --checkpoint "$OUT/checkpoint.pt" --model mlp --data digits --device "$DEVICE" \
    --steps 30 --probes 4 --quiet --overwrite --out "$OUT/torchrun-spectrum"
echo "results in $OUT (steps.txt: each step's exit code and seconds)"
