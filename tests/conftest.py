import torch

# GPU tests run on the device machine (`pytest -m gpu`); on a CPU machine they are not collected at all,
# so nothing is reported as skipped-but-green.
collect_ignore = [] if torch.cuda.is_available() else ["test_gpu_backends.py", "test_offload_gpu.py"]
