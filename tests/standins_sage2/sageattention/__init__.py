"""STAND-IN for SageAttention 2 (built from github.com/thu-ml/SageAttention, 2.2.0): the package's top level."""

from .core import sageattn_qk_int8_pv_fp8_cuda_sm90  # noqa: F401
