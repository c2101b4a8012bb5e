"""Predict: a finished run's model on new images (files, DICOM included, or a folder), predictions as a CSV."""

import streamlit as st

from app.components import predict as pr
from app.components.errors import guard
from app.components.picker import folder_form
from app.components.run_picker import run_picker

K = "pr"  # this page's session-state prefix

st.title("Predict")
st.caption("Classify new images with the model of a finished run (the model the meta set selected). Nothing is "
           "trained and no label is changed; the predictions come as a CSV: image, one probability per class, "
           "predicted class, confidence.")
run = run_picker(key=f"{K}_run", purpose="predict with")
if run is None:
    st.stop()
if not (run / "model.pt").is_file():
    st.warning("This run has no model.pt (it did not finish): choose another run.", icon=":material/warning:")
    st.stop()

tab_files, tab_zip, tab_folder = st.tabs(["Upload images", "Upload a zip", "Folder on this computer"])
with tab_files:
    st.caption("PNG, JPEG, TIFF, BMP or DICOM files (several at once; DICOMs without an extension too).")
    uploads = st.file_uploader("Images", accept_multiple_files=True, key=f"{K}_files")
    if st.button("Predict the uploaded images", key=f"{K}_go_files", type="primary", disabled=not uploads,
                 icon=":material/online_prediction:"):
        with guard("predict the uploaded images"):
            pr.predict(K, run, uploads=list(uploads))
with tab_zip:
    st.caption("A zip of images (any folders inside, DICOM included). Paths leaving the folder, links and other "
               "files are refused, as for a dataset zip.")
    archive = st.file_uploader("Zip of images", type=["zip"], key=f"{K}_zip")
    if st.button("Predict the images in the zip", key=f"{K}_go_zip", type="primary", disabled=archive is None,
                 icon=":material/unarchive:"):
        with guard("predict the images in the zip"):
            pr.predict(K, run, archive=archive)
with tab_folder:
    folder = folder_form(key=f"{K}_folder", label="Image folder (on the machine running this app)",
                         placeholder="/data/rop/new-screening", help="every image below it, sub-folders too",
                         button="Predict the folder")
    if folder:
        with guard("predict the folder"):
            pr.predict(K, run, folder=folder)

pr.results(K)
