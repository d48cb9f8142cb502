# Device machine, call 2+: `source benchmarks/device/env.sh` joins the wheel, unpacks the carried wheels into
# /tmp/site once, and sets PYTHONPATH (the machine's own torch 2.11 + cu130 is used).
if [ ! -f /tmp/site/.ready ]; then
  if [ -d .fa4b ] && [ -f /tmp/part.aa ]; then
    cat /tmp/part.aa .fa4b/part.ab > "/tmp/$(cat .fa4b/WHEEL_NAME)"
    (cd /tmp && sha256sum -c "$OLDPWD/.fa4b/SHA256" >/dev/null) || echo "WARNING: cutlass wheel hash mismatch"
    python3 -m zipfile -e "/tmp/$(cat .fa4b/WHEEL_NAME)" /tmp/site
  fi
  for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
  touch /tmp/site/.ready
fi
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/aiter_site:$PWD
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
