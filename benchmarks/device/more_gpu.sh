#!/usr/bin/env bash
# Device machine, after staging (stage1.sh with FA4 and fa3-fwd): "a" = determinism and invariance of every GPU
# backend (attention call and whole generation), the MHA v4 formats' drift on the [dev]-size model, the GPU backend
# tests; "b" = the 1024^2 Hopper frontier with the embedded model's verdicts, the Hopper images, the H100 image band.
# Set FLUXLAB_GIT_COMMIT first; everything under $OUT is packed into results.tgz (at most 8 files come back).
source benchmarks/device/env.sh
if [ "$1" = a ]; then
  timeout 160 python3 benchmarks/invariance.py --device cuda --out $OUT/invariance > $OUT/invariance.log 2>&1
  echo "invariance rc=$?"; tail -25 $OUT/invariance.log
  timeout 200 python3 benchmarks/amd_quant_dev.py --out $OUT/amd_quant_dev --budget-s 180 > $OUT/amd_quant_dev.log 2>&1
  echo "amd dev rc=$?"; tail -16 $OUT/amd_quant_dev.log
  FLUXLAB_GPU_RESULTS=$OUT/gpu_backend_tests.jsonl timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider \
      tests/test_gpu_backends.py > $OUT/gpu_tests.log 2>&1; echo "gpu tests rc=$?"; grep -E "FAILED|passed|failed" $OUT/gpu_tests.log | tail -8
else
  FRONTIER_CAP=${FRONTIER_CAP:-200} STEPS=8 bash benchmarks/device/hopper_gpu.sh 1024
  timeout 90 python3 benchmarks/hopper_images.py --out $OUT/hopper_images > $OUT/hopper_images.log 2>&1
  echo "images rc=$?"; tail -12 $OUT/hopper_images.log
  timeout ${BAND_CAP:-150} python3 benchmarks/image_bands.py --card h100 --keep-outputs --out $OUT/image_bands/image_bands.json > $OUT/image_bands.log 2>&1
  echo "bands rc=$?"; tail -8 $OUT/image_bands.log
fi
cd $OUT && tar czf /tmp/results.tgz . && mv /tmp/results.tgz . && ls
