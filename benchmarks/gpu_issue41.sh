#!/usr/bin/env bash
# Issue 41's GPU measurements in one run (about 9 minutes at most on an H100 / H200: 80 + 150 + 200 + 110 s), each section
# under its own time limit so that one slow section cannot eat the others' time. Writes
# benchmarks/gpu_issue41/*.json (and $OUT/ when the device tool provides it).
#   bash benchmarks/gpu_issue41.sh            # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_issue41.sh # the CPU dry run (tiny sizes)
set -u
DEVICE=${DEVICE:-cuda}
DEST=${OUT:-benchmarks/gpu_issue41}
mkdir -p "$DEST"
if [ "$DEVICE" = cuda ]; then
  BATCHES=1,8,32,128,512; STITCH=128,512; MODES=128; STEPS=30; ITER=1000; AGREE=200; LIMIT=95
else
  BATCHES=1,2; STITCH=2; MODES=2; STEPS=2; ITER=10; AGREE=2; LIMIT=600
fi
run() {  # section, time limit in s, extra arguments
  local section=$1 limit=$2; shift 2
  echo "== $section (limit ${limit} s)"
  timeout "$limit" python benchmarks/gpu_checks.py --device "$DEVICE" --sections "$section" \
    --batch-sizes "$BATCHES" --stitch-batch-sizes "$STITCH" --mode-batch-sizes "$MODES" --steps "$STEPS" \
    --iterations "$ITER" --agreement-samples "$AGREE" --section-limit "$LIMIT" \
    --out "$DEST/$section.json" "$@" || echo "== $section: exit $?"
}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
run graph 80
run modes 150
run agreement 200
run adaptive 110
