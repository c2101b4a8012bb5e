"""The meta-set editor: propose meta/test sets (engine make_split), adjust them by hand, save them as roles.

Owns st.session_state[f"{key}_*"]; the working copy of the roles is st.session_state[f"{key}_roles"]:
{"dataset": str, "roles": {image: role}, "version": int, "source": str, "dirty": bool}.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from app.components import dataset as ds
from app.components import thumbs
from app.components.browser import votes_caption
from app.components.errors import guard, show_problems
from app.plain import code, md

MIN_META_PER_CLASS = 5  # below this the meta set says little about a class (the ROP study had >= 30 per class)
ROP_META, ROP_TEST = 200, 300  # the ROP study's sizes (engine.data.split scales them down for small datasets)


def working_copy(key: str, dataset: Path) -> dict | None:
    """The session's working roles for this dataset, starting from the saved ones (None when nothing yet)."""
    slot = st.session_state.get(f"{key}_roles")
    if slot is None or slot.get("dataset") != str(dataset):
        saved = state.store().load_roles(dataset)
        slot = {"dataset": str(dataset), "roles": saved, "version": 0, "source": "saved", "dirty": False} if saved else None
        st.session_state[f"{key}_roles"] = slot
    return slot


def _set_roles(key: str, dataset: Path, roles: dict, source: str, dirty: bool) -> None:
    old = st.session_state.get(f"{key}_roles") or {}
    st.session_state[f"{key}_roles"] = {"dataset": str(dataset), "roles": dict(roles), "source": source,
                                        "version": int(old.get("version", 0)) + 1, "dirty": dirty}


def propose_form(key: str, dataset: Path, table, agg: pd.DataFrame, *, has_roles: bool) -> None:
    n_cons = int(agg["consensus"].sum())
    with st.form(f"{key}_propose", border=True):
        st.markdown("**Propose from consensus images**")
        st.caption(f"{n_cons} consensus images (all graders agree). The meta and test sets are drawn from them, "
                   "stratified by class and keeping each patient's images together. The ROP study used 200 meta and "
                   "300 test images; on a smaller dataset both are scaled down in proportion.")
        c1, c2, c3 = st.columns(3)
        meta = c1.number_input("Meta-set size", min_value=0, value=ROP_META, step=10, key=f"{key}_meta_size",
                               help="a count, or a fraction of the consensus images if below 1 (ROP study: 200)")
        test = c2.number_input("Test-set size", min_value=0, value=ROP_TEST, step=10, key=f"{key}_test_size",
                               help="a count, or a fraction of the consensus images if below 1 (ROP study: 300)")
        seed = c3.number_input("Seed", min_value=0, value=0, step=1, key=f"{key}_seed",
                               help="same seed, same proposal")
        label = "Propose again (replaces your edits)" if has_roles else "Propose meta and test sets"
        submitted = st.form_submit_button(label, type="secondary" if has_roles else "primary",
                                          icon=":material/auto_awesome:")
    if submitted:
        with guard("propose a split"):
            from engine.data.split import make_split

            roles = make_split(table, agg, meta=float(meta), test=float(test), seed=int(seed))
            _set_roles(key, dataset, dict(zip(table.frame["image"], roles, strict=True)), "proposed", True)
            st.session_state[f"{key}_note"] = size_note(roles.attrs.get("sizes", {}), roles.attrs.get("warnings", []))
            st.rerun()


def size_note(sizes: dict, warnings: list[str]) -> str:
    """Why the proposal has the sizes it has (engine make_split's attrs "sizes" and "warnings"), or ""."""
    target = sizes.get("target") or {}
    notes = []
    if sizes.get("scaled"):
        notes.append(f"Scaled down to {target.get('meta')} meta and {target.get('test')} test images: meta + test may "
                     f"use at most 500/622 of the {sizes.get('n_consensus')} consensus images (as in the ROP study).")
    notes += [md(w[0].upper() + w[1:] + ".") for w in warnings if w]
    return "  \n".join(notes)


def roles_series(table, roles: dict) -> pd.Series:
    return pd.Series([roles.get(img, "train") for img in table.frame["image"]], index=table.frame.index, name="role")


def balance(key: str, table, agg: pd.DataFrame, roles: dict) -> list[str]:
    """Live counts (roles x classes) and the warnings; returns the blocking problems (patients straddling sets)."""
    from engine.data.split import role_counts
    from engine.data.votes import patient_straddle_problems

    series = roles_series(table, roles)
    counts = role_counts(series, agg, table.classes)
    shown = counts[(counts.index != "unlabeled") | (counts["total"] > 0)]
    st.dataframe(shown, width="stretch")
    short = [c for c in table.classes if (int(counts.loc["meta", c]) if c in counts.columns else 0) < MIN_META_PER_CLASS]
    if short:
        names = ", ".join(f"**{md(c)}**" for c in short)
        st.warning(f"{'Classes' if len(short) != 1 else 'Class'} {names} {'have' if len(short) != 1 else 'has'} fewer "
                   f"than {MIN_META_PER_CLASS} meta images: the model's soft labels for them will be unreliable. Add "
                   "consensus images (Show: candidates), or patients held back below.", icon=":material/warning:")
        held_back(key, table, agg, roles, short)
    rows = [table.row_number(i) for i in range(len(table.frame))]
    problems = patient_straddle_problems(list(table.frame["patient_id"]), list(series), rows, "roles")
    for p in problems:
        st.warning(f"{md(p.problem.capitalize())}: give all images of one patient the same set.", icon=":material/group:")
    if st.session_state.get(f"{key}_note"):
        st.info(st.session_state[f"{key}_note"], icon=":material/info:")
    return problems


def held_back_patients(table, agg: pd.DataFrame, roles: dict, classes: list[str]) -> pd.DataFrame:
    """Patients outside the meta set with a consensus image of one of `classes` that cannot join it by ticking:
    another image of theirs has no consensus label. One row per patient: patient_id, class (of the consensus
    images), consensus images, held back by (the other images and their votes)."""
    frame = pd.concat([table.frame[["image", "patient_id"]].reset_index(drop=True),
                       agg[["votes", "majority", "consensus"]].reset_index(drop=True)], axis=1)
    frame["role"] = [roles.get(img, "train") for img in frame["image"]]
    rows = []
    for pid, group in frame[frame["patient_id"] != ""].groupby("patient_id", sort=True):
        cons = group[group["consensus"].astype(bool)]
        others = group[~group["consensus"].astype(bool)]
        wanted = cons[cons["majority"].isin(classes)]
        if wanted.empty or others.empty or (group["role"] == "meta").any():
            continue
        rows.append({"patient_id": pid, "class": ", ".join(sorted(set(wanted["majority"]))),
                     "consensus images": ", ".join(Path(i).name for i in cons["image"]),
                     "held back by": "; ".join(f"{Path(i).name} ({v or 'not graded'})"
                                              for i, v in zip(others["image"], others["votes"], strict=True))})
    return pd.DataFrame(rows, columns=["patient_id", "class", "consensus images", "held back by"])


def add_held_back(key: str, table, agg: pd.DataFrame, patients: list[str]) -> None:
    """The documented override: a held-back patient's consensus images join the meta set and the patient's other
    images get role=unlabeled (kept and predicted, but trained without their votes), so no patient straddles sets
    and nothing the experts said about a meta patient reaches training."""
    slot = st.session_state[f"{key}_roles"]
    consensus = dict(zip(table.frame["image"], agg["consensus"].astype(bool), strict=True))
    for img, pid in zip(table.frame["image"], table.frame["patient_id"], strict=True):
        if pid and pid in patients:
            slot["roles"][img] = "meta" if consensus[img] else "unlabeled"
    slot["version"] = int(slot.get("version", 0)) + 1
    slot["dirty"] = True
    st.session_state.pop(f"{key}_note", None)  # the proposal's size note no longer describes these sets
    st.session_state[f"{key}_moved"] = f"Added {len(patients)} held-back patient(s) to the meta set."


def held_back(key: str, table, agg: pd.DataFrame, roles: dict, classes: list[str]) -> None:
    """Which patients hold back consensus images of the short classes, and the override that adds them."""
    blocked = held_back_patients(table, agg, roles, classes)
    if blocked.empty:
        st.caption("No patient holds back a consensus image of these classes: grade more images of them, or add "
                   "consensus images from the test set (Show: candidates).")
        return
    with st.expander(f"Held-back patients ({len(blocked)})", icon=":material/group_off:"):
        st.caption("These patients have a consensus image of a short class, but another image of theirs has no "
                   "consensus label, so ticking the image is refused (a patient never straddles sets). Adding a "
                   "patient here puts its consensus images into the meta set and gives its other images the role "
                   "**unlabeled**: they stay in the dataset and are predicted and flagged, but training ignores "
                   "their votes.")
        st.dataframe(blocked, hide_index=True, width="stretch")
        chosen = st.multiselect("Patients to add", list(blocked["patient_id"]), key=f"{key}_held_pick",
                                placeholder="choose patients")
        st.button("Add to the meta set (other images unlabeled)", key=f"{key}_held_add", disabled=not chosen,
                  icon=":material/group_add:", on_click=add_held_back, args=(key, table, agg, list(chosen)))


def _toggle(key: str, image: str, target: str, widget_key: str, group: list[str], eligible: list[str]) -> None:
    """Tick = move the image (and the other images of its patient) into `target`; untick = back to train.

    `group` is the image's patient (all its images); `eligible` those of them that are consensus images.
    Unticking a patient added with the held-back override also gives its unlabeled images back to training.
    """
    slot = st.session_state[f"{key}_roles"]
    checked = bool(st.session_state.get(widget_key))
    slot["version"] = int(slot.get("version", 0)) + 1  # re-create the checkboxes from the roles
    if checked and len(eligible) < len(group):
        others = [g for g in group if g not in eligible]
        st.session_state[f"{key}_refused"] = (
            f"Not added: the same patient's {md(', '.join(Path(o).name for o in others))} has no consensus label, and "
            f"all images of a patient must be in the same set. See 'Held-back patients' under the counts for a way out.")
        return
    leaving = (target, "unlabeled") if target == "meta" and not checked else (target,)
    for img in group:
        current = slot["roles"].get(img, "train")
        slot["roles"][img] = target if checked else ("train" if current in leaving else current)
    if len(group) > 1:
        names = ", ".join(Path(g).name for g in group)
        st.session_state[f"{key}_moved"] = f"Moved the patient's {len(group)} images together: {md(names)}."
    slot["dirty"] = True
    st.session_state.pop(f"{key}_note", None)  # the proposal's size note no longer describes these sets


def editor_controls(key: str, table) -> tuple[str, str, list[str]]:
    """Which set to edit, which images to show, which classes: (target, show, classes)."""
    c1, c2, c3 = st.columns([1.3, 2, 2])
    with c1:
        target = st.segmented_control("Edit the", ["meta", "test"], default="meta", key=f"{key}_target",
                                      format_func=lambda r: f"{r} set") or "meta"
    with c2:
        show = st.segmented_control("Show", ["members", "candidates", "all graded"], default="members",
                                    key=f"{key}_show",
                                    help="candidates: consensus images not in this set (ticking one adds it)") \
            or "members"
    with c3:
        classes = st.multiselect("Majority class", table.classes, key=f"{key}_classes", placeholder="all classes")
    return target, show, classes


def editor(key: str, table, agg: pd.DataFrame, roles: dict, version: int, target: str, show: str,
           classes: list[str]) -> None:
    """Thumbnails with a checkbox each: ticked = in the chosen set."""
    frame = pd.concat([table.frame.reset_index(drop=True),
                       agg[["majority", "consensus", "n_graders"]].reset_index(drop=True)], axis=1)
    frame["role"] = [roles.get(img, "train") for img in frame["image"]]
    if show == "members":
        frame = frame[frame["role"] == target]
    elif show == "candidates":
        frame = frame[(frame["role"] != target) & frame["consensus"].astype(bool)]
    else:
        frame = frame[frame["n_graders"] > 0]
    if classes:
        frame = frame[frame["majority"].isin(classes)]
    if frame.empty:
        st.info(f"No image here. Switch 'Show' to *candidates* to add images to the {target} set.")
        return
    sl = thumbs.pager(len(frame), key=f"{key}_page_{target}_{show}", page_size=18)
    experts = list(table.experts)

    def below(item: dict) -> None:
        image = item["image"]
        wkey = f"{key}_cb_{version}_{target}_{image}"
        other = item["role"] if item["role"] not in ("train", target) else ""
        group = item["group"]
        st.checkbox(f"in {target}" + (f" (now {other})" if other else ""), value=item["role"] == target,
                    key=wkey, on_change=_toggle,
                    args=(key, image, target, wkey, group, [g for g in group if g in consensus]))

    full = pd.concat([table.frame[["image", "patient_id"]].reset_index(drop=True),
                      agg[["consensus"]].reset_index(drop=True)], axis=1)
    groups = {pid: list(g["image"]) for pid, g in full[full["patient_id"] != ""].groupby("patient_id")}
    consensus = set(full.loc[full["consensus"].astype(bool), "image"])
    for msg_key, icon in ((f"{key}_refused", ":material/block:"), (f"{key}_moved", ":material/group:")):
        if st.session_state.get(msg_key):
            st.toast(st.session_state.pop(msg_key), icon=icon)
    items = [{"path": str(Path(table.root) / r["image"]), "image": r["image"], "role": r["role"],
              "group": groups.get(r["patient_id"], [r["image"]]) if r["patient_id"] else [r["image"]],
              "caption": votes_caption(r, experts)} for r in frame.iloc[sl].to_dict("records")]
    thumbs.grid(items, key=f"{key}_grid", columns=5, below=below)


def save(key: str, dataset: Path, table, roles: dict) -> Path | None:
    """Write the roles file (engine write_roles), check it (engine read_roles), record it (WorkspaceStore.save_roles)."""
    from engine.data.split import read_roles, write_roles

    path = ds.roles_file(dataset)
    series = roles_series(table, roles)
    tmp = path.with_name(path.stem + ".checking.csv")
    write_roles(tmp, list(table.frame["image"]), list(series))
    try:
        read_roles(tmp, table)  # the same check the training run does with --roles
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    state.store().save_roles(dataset, dict(zip(table.frame["image"], series, strict=True)),
                             st.session_state.get(state.REVIEWER) or "app")
    slot = st.session_state[f"{key}_roles"]
    slot["dirty"], slot["source"] = False, "saved"
    state.log.info("saved roles for %s to %s", dataset, path)
    return path


def meta_set_editor(*, key: str, dataset: Path) -> None:
    """The whole step: propose, balance + warnings, edit, save."""
    table, agg = ds.table(dataset), ds.agg(dataset)
    slot = working_copy(key, dataset)
    propose_form(key, dataset, table, agg, has_roles=slot is not None)
    if slot is None:
        st.info("No meta set yet: propose one above, then check it by eye.", icon=":material/arrow_upward:")
        return
    roles, version = slot["roles"], slot["version"]
    target, show, classes = editor_controls(key, table)
    left, right = st.columns([1.3, 2.2], gap="medium")
    with left:
        st.markdown("**Images per set and class** (majority vote)")
        problems = balance(key, table, agg, roles)
        status = {"saved": "Saved — training uses these sets.", "proposed": "Proposed — not saved yet."}
        st.caption(status.get(slot["source"], "") if not slot["dirty"] or slot["source"] != "saved"
                   else "Edited — not saved yet.")
        if st.button("Save meta and test sets", type="primary", key=f"{key}_save", icon=":material/save:",
                     disabled=not slot["dirty"] and slot["source"] == "saved"):
            if problems:
                from engine.errors import InputError

                show_problems(InputError(problems), title="Cannot save: a patient is in two sets")
            else:
                with guard("save the roles"):
                    path = save(key, dataset, table, roles)
                    st.toast(f"Saved to {md(path.name)}", icon=":material/save:")
                    st.rerun()
        if ds.roles_file(dataset).exists():
            st.caption(f"Roles file: {code(ds.roles_file(dataset))}")
    with right:
        editor(key, table, agg, roles, version, target, show, classes)
