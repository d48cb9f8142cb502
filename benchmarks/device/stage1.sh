#!/usr/bin/env bash
# Device machine, call 1 of 2 (see shared device notes): park the first half of the 92 MB cutlass wheel and
# aiter's Triton subtree in /tmp, which survives while the machine stays warm.
set -e
cp .fa4a/part.aa /tmp/part.aa
rm -rf /tmp/aiter_site && cp -r .aiter/site /tmp/aiter_site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
