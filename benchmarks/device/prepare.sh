#!/usr/bin/env bash
# Here (the CPU machine), in the repo root: download the GPU machine's wheels from PyPI and lay them out in the
# ignored folders that stage1.sh reads, each call's share under the 64 MiB a device call may carry beside the tree.
#   .fa4p1 .. .fa4p4  the 92 MB cutlass-dsl-libs-cu13 wheel in four parts (+ WHEEL_NAME, SHA256 in .fa4p4)
#   .whl              diffusers and what it needs there, FA4, SageAttention 1 (carried with .fa4p1)
#   .whl2             the small cutlass-dsl / quack / tvm-ffi wheels (carried with .fa4p2)
#   .whl3             fa3-fwd, FlashAttention-3's forward-only Hopper build (carried alone)
# Calls: stage1.sh with carry [.fa4p1,.whl], [.fa4p2,.whl2], [.fa4p3], [.fa4p4], [.whl3], each within 30 s of the
# last (the machine stays warm that long), then `source benchmarks/device/env.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in .fa4p1 .fa4p2 .fa4p3 .fa4p4 .whl .whl2 .whl3; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> "$(git rev-parse --git-common-dir)/info/exclude"
  rm -rf "$d" && mkdir -p "$d"
done
dl() {
  local dest=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dest" "$@"
}
dl .whl diffusers==0.42.1 importlib_metadata==10.2.0 flash-attn-4==4.0.0b36 sageattention==1.0.6
dl .whl2 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
  quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
dl .whl3 fa3-fwd==0.0.3
tmp=$(mktemp -d)
dl "$tmp" nvidia-cutlass-dsl-libs-cu13==4.8.1
wheel=$(basename "$tmp"/*.whl)
(cd "$tmp" && sha256sum "$wheel" > SHA256 && split -n 4 -d "$wheel" part.)
mv "$tmp"/part.00 .fa4p1/part.a; mv "$tmp"/part.01 .fa4p2/part.b; mv "$tmp"/part.02 .fa4p3/part.c
mv "$tmp"/part.03 .fa4p4/part.d
echo "$wheel" > .fa4p4/WHEEL_NAME; mv "$tmp"/SHA256 .fa4p4/SHA256; rm -rf "$tmp"
du -sh .fa4p? .whl .whl2 .whl3
