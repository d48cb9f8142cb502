#!/usr/bin/env bash
# Device machine, after staging (stage1.sh): the GPU tests, the tiny-shape dispatch tax, the emulators beside the
# real kernels and the compile benchmark, in one call. Set FLUXLAB_GIT_COMMIT to the commit the tree is at (the
# machine's copy of .git is stale). Results land in $OUT (at most 8 files come back).
source benchmarks/device/env.sh
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
FLUXLAB_GPU_RESULTS=$OUT/gpu_backend_tests.jsonl timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider \
    tests/test_gpu_backends.py tests/test_util.py > $OUT/gpu_tests.log 2>&1; echo "gpu tests rc=$?"; tail -4 $OUT/gpu_tests.log
timeout 90 python3 benchmarks/dispatch_overhead.py --out $OUT; echo "overhead rc=$?"
timeout 120 python3 benchmarks/emulators_gpu.py --out $OUT > /dev/null; echo "emulators rc=$?"
TORCH_LOGS=recompiles,graph_breaks timeout 330 python3 benchmarks/flux2_compile.py --out $OUT/flux2_compile \
    > $OUT/compile.log 2>&1; echo "compile rc=$?"; grep -v "^V\|^ \|Traceback" $OUT/compile.log | tail -40
