"""Wall time of the default CPU comparison sweep, ``fluxlab.compare_attention()`` with its defaults.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/sweep_time.py --repeats 3

Run it from two checkouts (PYTHONPATH pointing at each) in turn to compare them; on a shared machine interleave the
runs and read the medians. Prints one JSON line: the times, their median, the rows and the input names.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import fluxlab


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = fluxlab.compare_attention(progress=False)
        times.append(time.perf_counter() - start)
    print(json.dumps({"fluxlab": fluxlab.__file__, "seconds": [round(t, 2) for t in times],
                      "median_s": round(statistics.median(times), 2), "rows": len(report.rows),
                      "inputs": sorted({r.input for r in report.rows}), "verdicts": report.verdicts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
