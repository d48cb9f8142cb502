#!/usr/bin/env bash
# Device machine, after staging (stage1.sh; aiter's Triton subtree for amd_quant_gpu.py parked in /tmp/aiter_quant):
# the gate's statistics of the exact GPU kernels (the data the gate's limits come from), the MX/FP8 quantisers
# bit-compared with aiter's Triton ones, and the GPU backend tests under the gate. Set FLUXLAB_GIT_COMMIT first.
source benchmarks/device/env.sh
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
timeout 200 python3 benchmarks/gate_thresholds.py --device cuda --out $OUT > $OUT/gate.log 2>&1
echo "gate thresholds rc=$?"; tail -15 $OUT/gate.log
timeout 90 python3 benchmarks/amd_quant_gpu.py --aiter-root /tmp/aiter_quant --out $OUT/amd_quant > $OUT/amd.log 2>&1
echo "amd quant rc=$?"; tail -12 $OUT/amd.log
FLUXLAB_GPU_RESULTS=$OUT/gpu_backend_tests.jsonl timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider \
    tests/test_gpu_backends.py > $OUT/gpu_tests.log 2>&1; echo "gpu tests rc=$?"; grep -E "FAILED|passed|failed" $OUT/gpu_tests.log | tail -25
