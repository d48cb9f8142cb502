"""Attention TFLOP/s and error vs float64 per backend at FLUX.2 shapes. Same as `fluxlab bench`.

    python benchmarks/attention.py --out benchmarks/results/h100
"""

import argparse
import sys

from fluxlab import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    bench.add_subcommand(sub)
    sys.exit(bench.main(parser.parse_args(["bench", *sys.argv[1:]])))
