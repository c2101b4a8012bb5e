"""What a finished run wants the clinician to know before trusting it: the engine's warnings in metrics.json
(`"warnings": [{"code", "message"}]`, e.g. warmup_model_selected, alpha_lowered, queue_exceeds_expected) and the
expected number of wrong majority labels next to the number of flagged images. Read from the run folder only; the
app never parses log.txt for them. The messages are the engine's words, shown as plain text.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st


def run_warnings(run_dir: Path) -> list[dict]:
    """[{"code", "message"}] from RUNDIR/metrics.json (empty for a run without them, e.g. an older engine)."""
    from app import jobs

    found = jobs.read_metrics(run_dir).get("warnings")
    if not isinstance(found, list):
        return []
    return [{"code": str(w.get("code", "")), "message": str(w.get("message", ""))}
            for w in found if isinstance(w, dict) and w.get("message")]


def expected_wrong(run_dir: Path) -> float | None:
    """metrics.json "expected_wrong_majority": how many majority labels the model expects to be wrong."""
    from app import jobs

    value = jobs.read_metrics(run_dir).get("expected_wrong_majority")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def warnings_box(*, key: str, run_dir: Path) -> None:
    """The run's warnings, one per line as plain text, in one bordered box (nothing when there are none)."""
    found = run_warnings(run_dir)
    if not found:
        return
    with st.container(border=True, key=f"{key}_box"):
        n = len(found)
        st.markdown(f":orange[:material/warning:] **{n} warning{'s' if n != 1 else ''} from this run:** read "
                    "before trusting its soft labels and flags.")
        for w in found:
            st.text(f"• {w['message']}")
