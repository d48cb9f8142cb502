# Device machine, after staging: `source benchmarks/device/env.sh` joins the cutlass wheel from /tmp/parts,
# unpacks it and the staged wheels (/tmp/stage_whl) into /tmp/site once, and sets PYTHONPATH (the machine's torch).
if [ ! -f /tmp/site/.ready ]; then
  if [ -f /tmp/parts/WHEEL_NAME ]; then
    wheel="/tmp/$(cat /tmp/parts/WHEEL_NAME)"
    cat /tmp/parts/part.* > "$wheel"
    (cd /tmp && sha256sum -c /tmp/parts/SHA256 >/dev/null) || echo "WARNING: cutlass wheel hash mismatch"
    python3 -m zipfile -e "$wheel" /tmp/site
  fi
  for w in /tmp/stage_whl/*.whl .whl/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/site; done
  touch /tmp/site/.ready
fi
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/aiter_site:$PWD
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
