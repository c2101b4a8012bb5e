"""5 · Export: one final label per image (review decisions applied), as a CSV with its provenance."""

import streamlit as st

from app import state
from app.components import export_view, precision, retrain
from app.components.errors import guard
from app.components.run_picker import run_picker
from app.plain import code

st.title("Export")
st.caption("Final label per image: a reviewer's decision where there is one, else the experts' consensus, else "
           "their majority vote; the model's suggestion only for images nobody graded.")
run = run_picker(key="ex_run", purpose="export")
if run is None:
    st.stop()

with guard("prepare the export"):
    from engine.export import export_labels, provenance_path, read_labels

    labels, classes = read_labels(run / "labels.csv")
    preview = export_labels(run, store=state.store())
    export_view.summary(preview, classes)
    st.markdown("**How precise were the flags?**")
    precision.panel(labels, state.store().current_decisions(run))

    out = run / export_view.EXPORT_NAME
    st.divider()
    c1, c2 = st.columns([1, 2], vertical_alignment="center")
    with c1:
        if st.button("Export cleaned labels", type="primary", key="ex_write", icon=":material/download:"):
            with guard("write the export"):
                export_labels(run, store=state.store(), out=out)
                state.log.info("exported %s", out)
                st.toast(f"Wrote {out.name}", icon=":material/save:")
    with c2:
        history = state.store().history(run)
        if out.exists() and len(history):
            from datetime import UTC, datetime

            written = datetime.fromtimestamp(out.stat().st_mtime, UTC)
            if datetime.fromisoformat(history["decided_at"].max()) > written:
                st.warning("Decisions were made after this file was written: export again to include them.",
                           icon=":material/update:")
        if out.exists():
            st.success(f"Written to {code(out)} with its provenance {code(provenance_path(out).name)} "
                       "(run, method, rule, counts, checksums).", icon=":material/task_alt:")
    if out.exists():
        st.download_button("Download the CSV", data=out.read_bytes(), file_name=f"{run.name}-{out.name}",
                           mime="text/csv", key="ex_download", icon=":material/file_download:")
    with st.expander(f"Preview ({len(preview)} rows)"):
        st.dataframe(preview, hide_index=True, width="stretch", height=300)

    st.divider()
    st.subheader("Retrain with your reviews")
    retrain.retrain_panel(key="ex_retrain", run=run, n_reviews=retrain.n_reviews(run))
