#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md in one unattended run, no network needed.
#
#   make bench-wheels                  # once, where pip can reach PyPI: peers' wheels -> benchmarks/wheels/
#   bash benchmarks/run_gpu.sh OUTDIR  # on the CUDA machine (python3 with torch + CUDA; the repo copied over)
#
# The peers are installed from benchmarks/wheels/ into a private folder (never next to torch,
# never with their dependencies' torch pins). Each step writes OUTDIR/<step>.json/.md/.log, and a
# step that fails does not stop the rest. Budget: about 30 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
SITE=$(mktemp -d)
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target "$SITE" benchmarks/wheels/*.whl
else
    echo "no peer wheels in benchmarks/wheels/: peers will be reported as not installed" >&2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"

step() {  # step NAME COMMAND...: run, keep the log, go on whatever happens
    local name=$1; shift
    echo "== $name: $*" | tee "$OUT/$name.log"
    "$@" 2>&1 | tee -a "$OUT/$name.log"
}

# 1. CUDA correctness (operators, host-memory basis)
step cuda-tests python3 -m pytest -q -p no:cacheprovider tests/test_operators.py -k "cuda or host"
step distributed-tests python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py
# 2. product cost on ResNet-18, batch 512, k = 8: fp32 and TF32, eager and compiled
step hvp-resnet18 python3 benchmarks/hvp_cost.py --workload resnet18 --batch-size 512 --device cuda \
    --tf32 --compile --json "$OUT/hvp-resnet18.json"
step hvp-transformer python3 benchmarks/hvp_cost.py --workload transformer-lm --batch-size 64 --device cuda \
    --tf32 --compile --json "$OUT/hvp-transformer.json"
# 3. side by side with the peers (peers' SLQ with one probe, its time scaled to 8: they run probes in turn)
for precision in "" "--tf32"; do
    tag=resnet18${precision:+-tf32}
    step "compare-$tag" python3 benchmarks/compare.py --workload resnet18 --device cuda --samples 2000 \
        --batch-size 500 --tools hessian-probe,hessian-probe-compiled,pyhessian,eigenthings,curvlinops \
        --peer-probes 1 --timeout 300 --trace-products 32 $precision \
        --json "$OUT/compare-$tag.json" --markdown "$OUT/compare-$tag.md"
done
step compare-transformer python3 benchmarks/compare.py --workload transformer-lm --device cuda \
    --tools hessian-probe,pyhessian,eigenthings,curvlinops --peer-probes 1 --timeout 300 --trace-products 32 \
    --json "$OUT/compare-transformer.json" --markdown "$OUT/compare-transformer.md"
step compare-digits python3 benchmarks/compare.py --workload digits-mlp --device cuda \
    --json "$OUT/compare-digits-cuda.json" --markdown "$OUT/compare-digits-cuda.md"
# 4. data parallelism (issue 6): full-sample SLQ on 1 vs all GPUs, basis on device / host / none
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
step distributed-slq python3 benchmarks/distributed_slq.py --workload resnet18 --samples 2000 --device cuda \
    --processes "$(python3 -c "print(','.join(str(2**i) for i in range(8) if 2**i <= $GPUS))")" \
    --json "$OUT/distributed-slq.json"
echo "results in $OUT"
