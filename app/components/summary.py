"""Dataset summary from engine inspect_dataset: counts, class balance, kappa table, per-expert agreement."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.plain import md


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _num(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def metrics_row(rep: dict) -> None:
    c = rep["counts"]
    cols = st.columns(6)
    cols[0].metric("Images", c["images"], help=f"{c['graded']} graded, {c['unlabeled']} nobody graded")
    cols[1].metric("Classes", len(rep["classes"]), help="in severity order: " + ", ".join(map(md, rep["classes"])))
    cols[2].metric("Graders", c["experts"], help=", ".join(map(md, rep["experts"])))
    cols[3].metric("Unanimity rate", _pct(rep["unanimity_rate"]),
                   help=f"{c['consensus']} of {c['graded']} graded images: at least two graders, all agreeing")
    cols[4].metric("Fleiss' κ", _num(rep["kappa"]["fleiss"]),
                   help=f"on the {rep['kappa']['fleiss_n_images']} images every expert graded")
    cols[5].metric("Patients", c["patients"] or "—", help="distinct patient_id values (— = no patient_id column)")


def class_balance(rep: dict) -> None:
    from app.components.charts import class_bars

    names = {"majority": "majority vote", "consensus": "consensus only"}
    frame = pd.DataFrame([{"class": c, "images": n, "count": names.get(kind, kind)}
                          for kind, per_class in rep["class_balance"].items() for c, n in per_class.items()])
    class_bars(frame, classes=rep["classes"], value="images", series="count", title="images")


def kappa_table(rep: dict) -> None:
    experts = rep["experts"]
    frame = pd.DataFrame(rep["kappa"]["pairwise"]).reindex(index=experts, columns=experts).astype(float)
    st.dataframe(frame.style.format("{:.2f}", na_rep="—"), width="stretch")
    kappa = rep["kappa"]
    weighted = (f" The classes are a severity scale, so disagreements of two steps count more in Cohen's weighted κ: "
                f"mean pairwise linear {_num(kappa.get('mean_pairwise_linear'))}, quadratic "
                f"{_num(kappa.get('mean_pairwise_quadratic'))}." if rep.get("ordinal") else "")
    st.caption(f"Cohen's κ on the images both experts graded. Mean pairwise κ "
               f"{_num(kappa['mean_pairwise'])}, Fleiss' κ {_num(kappa['fleiss'])}." + weighted)


def experts_table(rep: dict) -> None:
    frame = pd.DataFrame(rep["experts_table"])
    st.dataframe(
        frame, hide_index=True, width="stretch",
        column_config={
            "expert": "Expert",
            "n_graded": st.column_config.NumberColumn("Images graded"),
            "agree_majority": st.column_config.ProgressColumn(
                "Agrees with majority", min_value=0, max_value=1, format="percent",
                help="share of the expert's grades equal to the majority (own vote included)"),
            "n_consensus_others": st.column_config.NumberColumn(
                "Others agree on", help="images where the other experts all agree (≥ 2 of them)"),
            "agree_consensus": st.column_config.ProgressColumn(
                "Agrees with the others", min_value=0, max_value=1, format="percent",
                help="leave-one-out: the expert's grade vs the other experts' consensus"),
            "kappa_mean": st.column_config.NumberColumn("Mean κ with others", format="%.2f"),
        },
    )


def warnings_list(rep: dict) -> None:
    if not rep["warnings"]:
        st.success("No warnings: the dataset looks consistent.", icon=":material/check_circle:")
    for w in rep["warnings"]:
        st.warning(md(w), icon=":material/warning:")


def class_order(*, key: str, dataset, classes: list[str]) -> None:
    """The class order (least -> most severe) and a popover to change it. Owns st.session_state[f"{key}_*"]."""
    from app.components import dataset as ds
    from app.components.errors import guard

    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.caption("Class order, least to most severe: **" + " → ".join(map(md, classes)) + "**. A tied vote goes to the more "
               "severe class (the clinically cautious choice), and the image is flagged for review.")
    with c2.popover("Change order", icon=":material/swap_vert:"):
        with st.form(f"{key}_form", border=False):
            text = st.text_input("Classes, least to most severe, comma-separated", value=", ".join(classes),
                                 key=f"{key}_text")
            if st.form_submit_button("Save order"):
                with guard("change the class order"):
                    ds.set_classes(dataset, [c.strip() for c in text.split(",") if c.strip()])
                    st.rerun()
