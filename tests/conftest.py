import os

import pytest
import torch

# GPU tests run on the device machine (`pytest -m gpu`); on a CPU machine they are not collected at all,
# so nothing is reported as skipped-but-green.
collect_ignore = [] if torch.cuda.is_available() else ["test_gpu_backends.py", "test_offload_gpu.py",
                                                      "test_compile_gpu.py"]


@pytest.fixture
def umask_022():
    """The usual umask for the test (file-mode checks expect 0644), the caller's restored after."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
