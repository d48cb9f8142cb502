"""Replay: run this machine's backends on q/k/v recorded elsewhere and compare with the outputs recorded there.
This is how an AITER run on an MI300X is compared with FA4 on an H100: record there, replay here.
"""

from __future__ import annotations

from .attention import compare_attention
from .inputs import record_case
from .records import load_records, recorded_on


def replay(path, backends=None, **compare_kwargs):
    """Compare ``backends`` (default: every backend that runs here) on the records saved at ``path``.

    Every record's inputs are compared with float64 as usual; the output recorded on the other machine gets
    its own row (``recorded:<backend>@<machine>``) judged by the same rule, and every local backend's
    ``rel_l2_vs_recorded`` says how far it lands from that output. The report's ``meta["recorded"]`` holds
    the other machine's platform, versions and git revision from the manifest.

    ``path`` must be a records folder (``load_records``): a typo raises RecordsNotFoundError, and a damaged or
    edited folder, or a record ``fluxlab.attention`` would refuse (scale <= 0, NaN, mismatched shapes), raises
    RecordIntegrityError before anything runs: nothing is replayed as "pass" that a live call would refuse.
    """
    records, manifest = load_records(path)
    where = recorded_on(manifest)
    cases = [record_case(record, i, recorded_on=where) for i, record in enumerate(records)]
    report = compare_attention(cases, backends=backends, **compare_kwargs)
    report.meta["recorded"] = {key: manifest.get(key) for key in
                               ("platform_description", "platform", "versions", "git", "backends", "created_utc")}
    report.meta["recorded_results"] = manifest.get("results")
    return report
