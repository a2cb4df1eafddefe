#!/bin/bash
# On the GPU machine, from the checkout's root: one device call, one mode of bench/gpu/gpu_bench.py.
#   bash bench/gpu/run.sh serve-ab|replicas [gpu_bench.py options]
# Needs the rig staged in .gpu/ (bench/gpu/stage.sh, carried with the call). Unpacks vLLM's CUDA
# build into /tmp/site, puts this checkout's packages on PYTHONPATH (links, nothing built), writes
# the Pixtral-12B-2409-shaped model folder, checks the kernels, then runs the benchmark with what
# is left of the call's 10 minutes. Results and logs land in $OUT.
set -u
cd "$(dirname "$0")/../.."
RIG=${PIXTRAL_GPU_RIG:-.gpu}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CALL_SECONDS=${CALL_SECONDS:-570}   # end well inside the device's 600 s per call
T0=$(date +%s)
log() { echo "[run.sh t+$(( $(date +%s) - T0 ))s] $*"; }
[ $# -ge 1 ] || { echo "usage: bash bench/gpu/run.sh serve-ab|replicas [options]" >&2; exit 2; }
[ -f "$RIG/py.tar.xz" ] || { echo "run.sh: $RIG/py.tar.xz missing: run bench/gpu/stage.sh here and carry .gpu" >&2; exit 2; }

# The rig's vLLM has no flashinfer (its sampler is off); nothing may reach the network.
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONDONTWRITEBYTECODE=1

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv,noheader
echo "checkout: $(tr '\n' ' ' < "$RIG/COMMIT" 2>/dev/null)"; nproc
if [ ! -f /tmp/site/.done ]; then
  rm -rf /tmp/site; mkdir -p /tmp/site
  python3 -c "import sys,tarfile; [tarfile.open(f).extractall('/tmp/site', filter='fully_trusted') for f in sys.argv[1:]]" \
    "$RIG/bin.tar.xz" "$RIG/py.tar.xz" || { log "unpacking the rig failed"; exit 3; }
  touch /tmp/site/.done
fi
log "vLLM unpacked"
# This checkout as the two import packages, the way pyproject.toml maps them.
mkdir -p /tmp/proj /tmp/pxbin
ln -sfn "$PWD/runtime" /tmp/proj/pixtral_runtime
ln -sfn "$PWD/operator" /tmp/proj/pixtral_operator
export PYTHONPATH=/tmp/proj:/tmp/site
# The `vllm` console script pip would have written: the supervisor launches `vllm serve` from PATH.
printf '#!/bin/sh\nexec %s -c "import sys; from vllm.entrypoints.cli.main import main; sys.exit(main())" "$@"\n' \
  "$(command -v python3)" > /tmp/pxbin/vllm
chmod +x /tmp/pxbin/vllm
export PATH=/tmp/pxbin:$PATH
python3 -c "import sys,torch,vllm,transformers; print('python',sys.version.split()[0],'torch',torch.__version__,'cuda',torch.version.cuda,'vllm',vllm.__version__,'transformers',transformers.__version__)"
python3 "$RIG/make_model.py" /tmp/model || exit 4
python3 "$RIG/sanity.py" || { log "kernel sanity check failed"; exit 5; }
log "sanity done"
python3 bench/gpu/gpu_bench.py "$@" --out "$OUT" --deadline $(( CALL_SECONDS - ( $(date +%s) - T0 ) ))
rc=$?
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
log "done (gpu_bench exit $rc)"
exit $rc
