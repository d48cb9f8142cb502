#!/usr/bin/env bash
# Device machine, after staging (stage1.sh with FA4 and fa3-fwd): the Hopper kernels through the frontier, compiled,
# at one image side (the first argument, 1024 or 2048), FA4 exact at the ends and fa3_fp8 between; with "extras",
# also the embedded model's images under each Hopper kernel and the gate on the [dev]-size model's captured
# activations. Set FLUXLAB_GIT_COMMIT first; results under $OUT.
source benchmarks/device/env.sh
size=${1:-1024}; steps=${STEPS:-8}
cap=${FRONTIER_CAP:-300}; embedded=$([ "$2" = extras ] || echo --no-embedded)
timeout $cap python3 benchmarks/frontier_gpu.py --exact fa4 --fast fa3_fp8 --compile --size "$size" $embedded \
    --steps "$steps" --embedded-steps 8 --rounds 3 --budget-s $(( cap - 30 )) --no-locate \
    --out $OUT/frontier_fa3_fp8_$size > $OUT/frontier_$size.log 2>&1
echo "frontier $size rc=$?"; grep -A12 "^| schedule" $OUT/frontier_$size.log | head -30; tail -3 $OUT/frontier_$size.log
if [ "$2" = extras ]; then
  timeout 150 python3 benchmarks/hopper_images.py --out $OUT/hopper_images > $OUT/hopper_images.log 2>&1
  echo "images rc=$?"; tail -14 $OUT/hopper_images.log
  timeout 120 python3 benchmarks/captured_dev.py --out $OUT/captured_dev > $OUT/captured_dev.log 2>&1
  echo "captured rc=$?"; tail -4 $OUT/captured_dev.log
  timeout 50 python3 benchmarks/sweep_time.py --repeats 2 > $OUT/sweep_time.json 2> $OUT/sweep_time.log
  echo "sweep rc=$?"; cut -c1-400 $OUT/sweep_time.json
  timeout 60 python3 -m fluxlab.cli compare --invariance --device cuda --out $OUT/invariance > $OUT/invariance.log 2>&1
  echo "invariance rc=$?"; tail -20 $OUT/invariance.log
fi
