#!/usr/bin/env bash
# Device machine, staging calls: the 92 MB cutlass wheel travels in 23 MB parts (.fa4p1..4, one per call, so the
# working tree + carried folders stay under the 64 MiB limit); parts, carried wheels (.whl, .whl2, .whl3) and aiter's
# Triton subtree (.aiter) are parked in /tmp, which survives while the machine stays warm (30 s between calls).
set -e
mkdir -p /tmp/parts /tmp/stage_whl
for d in .fa4p*; do [ -d "$d" ] && cp "$d"/part.* /tmp/parts/ 2>/dev/null || true; done
[ -f .fa4p4/WHEEL_NAME ] && cp .fa4p4/WHEEL_NAME .fa4p4/SHA256 /tmp/parts/
for d in .whl .whl2 .whl3; do [ -d "$d" ] && cp "$d"/*.whl /tmp/stage_whl/; done
if [ -d .aiter ]; then rm -rf /tmp/aiter_site && cp -r .aiter/site /tmp/aiter_site; fi
ls /tmp/parts /tmp/stage_whl
