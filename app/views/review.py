"""4 · Review: the flagged images of a run, most doubtful first; each decision is one row in the audit log."""

from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from app.components import ordering, precision, retrain
from app.components import review as rv
from app.components.errors import guard
from app.components.run_picker import run_picker
from app.components.run_warnings import warnings_box
from app.plain import md
from engine.data.aggregate import parse_votes
from engine.data.schema import parse_bool
from engine.flags import FLAG_CODES

K = "rv"  # this page's session-state prefix

st.title("Review")
run = run_picker(key="rv_run", purpose="review")
if run is None:
    st.stop()

reviewer = st.session_state.get(state.REVIEWER, "")
if not reviewer:
    with st.form("rv_name_form", border=True):
        st.markdown("**Who is reviewing?** Your name is recorded with every decision (asked once per session).")
        name = st.text_input("Your name", key="rv_name_input", placeholder="e.g. Dr A. Smith")
        if st.form_submit_button("Start reviewing", type="primary") and name.strip():
            st.session_state[state.REVIEWER] = name.strip()
            st.rerun()
    st.stop()

rv.take_selection(K)  # a row picked in a table on the last run: before any widget is drawn
with guard("load the run's labels"):
    labels, classes = rv.load_labels(run)
    q = rv.queue(labels)
    store = state.store()
    decisions = store.current_decisions(run)
    current = {d["image"]: d for d in decisions.to_dict("records")}
    history = store.history(run)
    last_action = history.groupby("image")["action"].last().to_dict() if len(history) else {}
    n_total, n_done = len(q), int(q["image"].isin(current).sum())

    top_l, top_r = st.columns([3, 1], vertical_alignment="center")
    with top_l:
        st.progress(n_done / n_total if n_total else 1.0, text=f"**{n_done} of {n_total} reviewed**")
    with top_r:
        st.caption(f"Reviewing as **{md(reviewer)}**")
        if st.button("Not you?", key="rv_change_name", type="tertiary"):
            st.session_state.pop(state.REVIEWER, None)
            st.rerun()
    warnings_box(key=f"{K}_warn", run_dir=run)
    msg = st.session_state.pop(f"{K}_msg", None)
    if msg:
        (st.toast if msg[0] == "ok" else st.error)(msg[1], icon=":material/check_circle:" if msg[0] == "ok" else ":material/error:")
    precision.caption(labels, decisions)
    if q.empty:
        st.success("No image of this run is flagged: the model agrees with the experts everywhere.", icon=":material/celebration:")
        st.stop()
    q = ordering.order_queue(K, run, labels, classes, q, decisions)

    experts = sorted({e for v in q["votes"] for e in parse_votes(v)})
    f1, f2, f3, f4 = st.columns([2.4, 1.8, 1.5, 1.2])
    refilter = {"on_change": rv.filters_changed, "args": (K,)}  # a new filter shows its list's first image
    show = f1.segmented_control("Show", ["to review", "skipped", "reviewed", "all"], default="to review",
                                key=f"{K}_f_show", width="stretch", **refilter) or "to review"
    codes = [c for c in FLAG_CODES if any(c in rs for rs in q["_reasons"])]  # engine order, present ones
    codes += sorted({c for rs in q["_reasons"] for c in rs} - set(codes))
    reasons = f2.multiselect("Reason", codes, key=f"{K}_f_reason", format_func=rv.reason_label,
                             placeholder="any reason" if codes else "no reason codes in this run",
                             disabled=not codes, **refilter)
    cls_filter = f3.multiselect("Class (majority or suggestion)", classes, key=f"{K}_f_class", placeholder="any class",
                                **refilter)
    expert = f4.selectbox("Expert", ["any expert", *experts], key=f"{K}_f_expert",
                          help="only images this expert graded", **refilter)

    status = ["reviewed" if img in current else ("skipped" if last_action.get(img) == "skip" else "to review")
              for img in q["image"]]
    view = q.assign(_status=status)
    if show != "all":
        view = view[view["_status"] == show]
    if reasons:
        view = view[view["_reasons"].map(lambda rs: any(r in reasons for r in rs))]
    if cls_filter:
        view = view[view["majority"].isin(cls_filter) | view["suggested"].isin(cls_filter)]
    if expert != "any expert":
        view = view[view["votes"].map(lambda v: expert in parse_votes(v))]
    order = list(view["image"])

    wanted = st.session_state.get(f"{K}_current")
    if wanted not in set(q["image"]):
        wanted = order[0] if order else None
    if wanted is None:
        if show == "to review" and n_done == n_total:
            st.success(f"All {n_total} flagged images are reviewed. Export the cleaned labels next.", icon=":material/celebration:")
            st.page_link("views/export.py", label="Go to Export", icon=":material/arrow_forward:")
        else:
            st.info("No image matches these filters.")
    else:
        row = q[q["image"] == wanted].iloc[0].to_dict()
        pos = order.index(wanted) if wanted in order else -1
        after = order[pos + 1:] if pos >= 0 else order
        next_image = next((img for img in after if img not in current and img != wanted), None)
        if next_image is None:
            next_image = next((img for img in order if img not in current and img != wanted), None)
        prev_in_list = order[pos - 1] if pos > 0 else None
        trail = st.session_state.get(f"{K}_trail") or []
        # outside the filtered list (e.g. back to an image the filter hides), Next leads into the list
        next_in_list = order[pos + 1] if 0 <= pos < len(order) - 1 else (order[0] if pos < 0 and order else None)
        if st.session_state.get(f"{K}_shown") != wanted:  # a new image: its own note (a skip's note), not the last one's
            st.session_state[f"{K}_note"] = rv.pending_note(history, wanted)
            st.session_state[f"{K}_shown"] = wanted

        root = rv.dataset_root(run)
        left, right = st.columns([3, 2], gap="large")
        with left:
            rv.image_view(K, (root / row["image"]) if root else Path(row["image"]))
        with right:
            where = f"{pos + 1} of {len(order)} in this list" if pos >= 0 else "not in the filtered list"
            st.markdown(f"#### {md(Path(row['image']).name)}")
            st.caption(f"{where} · flag score {float(row['_score']):.2f}")
            for reason in row["_reasons"]:  # one box per reason code, the primary first
                st.warning(md(rv.reason_label(reason)), icon=":material/flag:")
            if row["flag_reason"]:  # the engine's words, whole (older runs have only these)
                (st.caption if row["_reasons"] else st.warning)(md(row["flag_reason"]))
            majority = row["majority"]
            st.markdown(f"Majority vote: **{md(majority or '—')}**"
                        + (" · unanimous" if parse_votes(row["votes"]) and parse_bool(row["consensus"])
                           else ""))
            st.dataframe(rv.votes_frame(row, majority), hide_index=True, width="stretch",
                         column_config={"agrees with majority": st.column_config.CheckboxColumn()})
            rv.soft_label_chart(row, classes)
            suggestion = row["suggested"]
            try:
                conf = f" (confidence {float(row['confidence']):.2f})"
            except ValueError:
                conf = ""
            st.markdown(f"Model suggests: **{md(suggestion or '—')}**{conf}")
            decided = current.get(wanted)
            if decided is not None:
                when = str(decided["decided_at"])[:16].replace("T", " ")
                st.info(f"Current decision: **{md(decided['new_label'])}** by {md(decided['reviewer'])} ({when} UTC, "
                        f"{rv.ACTION_TEXT[decided['action']]}). A new action replaces it; the old one stays in "
                        "the history.", icon=":material/history:")
            elif last_action.get(wanted) == "skip":
                st.info("Skipped earlier: it stays in the queue until someone decides. The skip's note, if any, is "
                        "in the note field and is saved with the decision.", icon=":material/skip_next:")
            old_label = decided["new_label"] if decided is not None else (majority or None)

            st.text_input("Note (optional, saved with your next action)", key=f"{K}_note")
            st.button(f"Accept suggestion: {md(suggestion)}  [A]", key=f"{K}_accept", type="primary", width="stretch",
                      disabled=not suggestion, on_click=rv.decide,
                      args=(K, str(run), wanted, "accept_suggestion", suggestion, old_label, next_image))
            st.button(f"Keep majority: {md(majority)}  [M]", key=f"{K}_majority", width="stretch",
                      disabled=not majority, on_click=rv.decide,
                      args=(K, str(run), wanted, "keep_majority", majority, old_label, next_image))
            st.caption("Or choose the class yourself:")
            ccols = st.columns(len(classes))
            for i, (col, c) in enumerate(zip(ccols, classes, strict=True)):
                col.button(f"{md(c)}  [{i + 1}]" if i < 9 else md(c), key=f"{K}_class_{i}", width="stretch",
                           on_click=rv.decide, args=(K, str(run), wanted, "choose_class", c, old_label, next_image))
            n1, n2, n3 = st.columns(3)
            n1.button("← Previous", key=f"{K}_prev", width="stretch", disabled=not trail and prev_in_list is None,
                      on_click=rv.go_back, args=(K, prev_in_list), help="back to the image you saw before")
            n2.button("Skip  [S]", key=f"{K}_skip", width="stretch", on_click=rv.decide,
                      args=(K, str(run), wanted, "skip", None, old_label, next_image),
                      help="record that you looked and passed; the image stays in the queue")
            n3.button("Next →", key=f"{K}_next", width="stretch", disabled=next_in_list is None,
                      on_click=rv.go_to, args=(K, next_in_list, wanted), help="look at the next image without deciding")
        rv.keyboard_shortcuts(K, len(classes))
        st.caption("Keys: **A** accept suggestion · **M** keep majority · **1–" + str(min(len(classes), 9)) +
                   "** choose a class · **S** skip · **←/→** previous/next (not while typing a note).")

    st.divider()
    tab_list, tab_hist = st.tabs([f"This list ({len(view)})", f"Decision history ({len(history)})"])
    with tab_list:
        table = pd.DataFrame({
            "image": view["image"], "status": view["_status"], "majority": view["majority"],
            "suggested": view["suggested"], "flag score": view["_score"],
            "decision": [current[i]["new_label"] if i in current else "" for i in view["image"]],
            "reason": [", ".join(rv.reason_label(c) for c in rs) if rs else text
                       for rs, text in zip(view["_reasons"], view["flag_reason"], strict=True)]})
        st.session_state[f"{K}_list_images"] = list(table["image"])  # what a picked row means (rv.take_selection)
        st.dataframe(table, hide_index=True, width="stretch", key=rv.table_key(K, "list"), on_select="rerun",
                     selection_mode="single-row", height=260,
                     column_config={"flag score": st.column_config.NumberColumn(format="%.2f")})
    with tab_hist:
        if history.empty:
            st.caption("No decisions yet. Every action is stored here for good: changing a decision adds a row.")
        else:
            hist = history.sort_values("id", ascending=False)[
                ["id", "image", "action", "old_label", "new_label", "reviewer", "decided_at", "note"]]
            st.session_state[f"{K}_hist_images"] = list(hist["image"])
            st.dataframe(hist, hide_index=True, width="stretch", key=rv.table_key(K, "hist"), on_select="rerun",
                         selection_mode="single-row", height=260)
            st.caption("Select a row to go back to that image and change the decision (the history is kept).")

    st.divider()
    st.subheader("Retrain with your reviews")
    retrain.retrain_panel(key=f"{K}_retrain", run=run, n_reviews=retrain.n_reviews(run))
