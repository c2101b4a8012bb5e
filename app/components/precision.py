"""How precise the flags were: realised (from the decisions) beside predicted (from the label estimate), and the errors
the estimate expects in the images nobody has decided yet. The numbers are engine.flag_precision's."""

from __future__ import annotations

import pandas as pd
import streamlit as st


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def numbers(labels: pd.DataFrame, decisions: pd.DataFrame) -> dict:
    from engine.flag_precision import flag_precision

    return flag_precision(labels, decisions)


def caption(labels: pd.DataFrame, decisions: pd.DataFrame) -> None:
    """One line for the Review page."""
    p = numbers(labels, decisions)
    if p["reviewed_flagged"]:
        lo, hi = p["realised_interval"]
        head = (f"Flag precision so far: {p['changed_flagged']} of {p['reviewed_flagged']} reviewed flags changed the "
                f"label ({_pct(p['realised_precision'])}, 95 % interval {_pct(lo)}–{_pct(hi)}); the estimate predicted "
                f"{_pct(p['predicted_precision'])} for these images.")
    else:
        head = f"No flagged image reviewed yet; the estimate predicts {_pct(p['predicted_precision_queue'])} of the flags " \
               "are real errors."
    st.caption(f"{head} About {p['errors_left']:.1f} wrong majority labels are expected in the {p['n_undecided']} "
               "images nobody has decided.")


def panel(labels: pd.DataFrame, decisions: pd.DataFrame) -> None:
    """Metrics for the Export page."""
    p = numbers(labels, decisions)
    c1, c2, c3, c4 = st.columns(4)
    interval = p["realised_interval"]
    c1.metric("Flag precision, realised", _pct(p["realised_precision"]),
              help=f"{p['changed_flagged']} of {p['reviewed_flagged']} reviewed flagged images got another label than "
                   "the experts' majority" + (f" (95 % interval {_pct(interval[0])}–{_pct(interval[1])})"
                                               if interval else ""))
    c2.metric("Flag precision, predicted", _pct(p["predicted_precision"]),
              help="what the label estimate expected for the same images: their mean flag score, P(majority wrong)")
    c3.metric("Predicted for the whole queue", _pct(p["predicted_precision_queue"]),
              help=f"mean flag score of all {p['n_flagged']} flagged images")
    c4.metric("Errors left (expected)", f"{p['errors_left']:.1f}",
              help=f"Σ flag score over the {p['n_undecided']} graded images nobody has decided yet")
