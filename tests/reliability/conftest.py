"""Counting the bad-input suite: what ran, what was refused by name, what is pending where.

At the end of a session that ran ``test_bad_inputs.py`` the counts are printed; with
``PYROBUST_RELIABILITY_JSON=path`` they are also written as JSON (the source of the numbers in
``docs/RELIABILITY.md``).
"""

from __future__ import annotations

import json
import os
from collections import Counter


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    module = __import__("sys").modules.get("tests.reliability.test_bad_inputs")
    if module is None or not module.OUTCOMES:
        return
    counts = _counts(module)
    tr = terminalreporter
    tr.section("bad-input suite counts")
    tr.write_line(
        f"entry points {counts['entry_points']}, table inputs {counts['inputs']}, "
        f"named {counts['named']}, pending (strict xfail) {counts['pending']}, "
        f"other {counts['other']}; property-based: {counts['property_examples']} examples, "
        f"{counts['property_named']} named"
    )
    for group, row in sorted(counts["by_group"].items()):
        tr.write_line(
            f"  {group}: {row['entry_points']} entry points, {row['inputs']} inputs, "
            f"{row['named']} named, {row['pending']} pending"
        )
    for area, n in sorted(counts["pending_by_area"].items()):
        tr.write_line(f"  pending in {area}: {n}")
    for outcome, n in sorted(counts["by_outcome"].items()):
        tr.write_line(f"  outcome {outcome}: {n}")
    path = os.environ.get("PYROBUST_RELIABILITY_JSON")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(counts, f, indent=1, sort_keys=True)


def _counts(module) -> dict:
    table = {k: v for k, v in module.OUTCOMES.items() if "outcome" in v}
    props = {k: v for k, v in module.OUTCOMES.items() if "examples" in v}
    pending_reason = {c.id: (c.xfail or module.PENDING.get(c.id)) for c in module.CASES}
    by_outcome = Counter(v["outcome"] for v in table.values())
    pending = {k: v for k, v in table.items() if pending_reason.get(k)}
    areas = Counter(pending_reason[k].split(":")[0] for k in pending)
    entries = {v["entry"] for v in table.values()} | {v["entry"] for v in props.values()}
    by_group: dict[str, dict] = {}
    for k, v in table.items():
        row = by_group.setdefault(
            _group(v["entry"]), {"entry_points": set(), "inputs": 0, "named": 0, "pending": 0}
        )
        row["entry_points"].add(v["entry"])
        row["inputs"] += 1
        row["pending"] += int(k in pending)
        row["named"] += int(k not in pending and v["outcome"] in ("named", "accepted"))
    for row in by_group.values():
        row["entry_points"] = len(row["entry_points"])
    return {
        "entry_points": len(entries),
        "inputs": len(table),
        "named": sum(
            1
            for k, v in table.items()
            if v["outcome"] in ("named", "accepted") and k not in pending
        ),
        "by_group": by_group,
        "pending": len(pending),
        "other": sum(
            1
            for k, v in table.items()
            if v["outcome"] not in ("named", "accepted") and k not in pending
        ),
        "by_outcome": dict(by_outcome),
        "pending_by_area": dict(areas),
        "pending_cases": {k: {**table[k], "reason": pending_reason[k]} for k in pending},
        "not_named": {k: v for k, v in table.items() if v["outcome"] != "named"},
        "cases": table,
        "property_tests": props,
        "property_examples": sum(v["examples"] for v in props.values()),
        "property_named": sum(v["named"] for v in props.values()),
        "entry_point_list": sorted(entries),
    }


def _group(entry: str) -> str:
    """The part of pyrobust an entry point belongs to (for the counts by group)."""
    if entry.startswith("pyrobust "):
        return "command line"
    parts = entry.split(".")
    return "pyrobust.__all__ functions" if len(parts) == 2 else f"pr.{parts[1]}"
