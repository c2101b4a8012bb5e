"""Predict page: a finished run's model on uploaded images (PNG + DICOM) and on a folder, through the engine CLI."""

from __future__ import annotations

import pandas as pd

from tests.app.conftest import CLASSES, write_model

TIMEOUT = 180  # the engine subprocess imports torch and loads the model: slow on a busy shared CPU


def _open(at):
    at.run()
    at.switch_page("views/predict.py").run()
    assert not at.exception, at.exception


def _results(at) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if "predicted" in df.value.columns and "image" in df.value.columns)


def test_predict_two_uploaded_images_png_and_dicom(at, fake_run, demo, workspace):
    write_model(fake_run)
    _open(at)
    png = next(p for p in sorted((demo / "images").glob("*.png")))
    dcm = next(p for p in sorted((demo / "images").glob("*.dcm")))
    at.file_uploader(key="pr_files").set_value([(png.name, png.read_bytes(), "image/png"),
                                                 ("scan-without-extension", dcm.read_bytes(), "application/dicom")])
    at.run()
    at.button(key="pr_go_files").click().run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]
    shown = _results(at)
    assert sorted(shown["image"]) == sorted([png.name, "scan-without-extension"])
    probs = shown[[f"p:{c}" for c in CLASSES]].astype(float)
    assert ((probs.sum(axis=1) - 1).abs() < 1e-4).all()
    assert set(shown["predicted"]) <= set(CLASSES)
    (folder,) = list((workspace / "predictions").iterdir())
    written = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    assert list(written.columns) == ["image", *[f"p:{c}" for c in CLASSES], "predicted", "confidence"]
    assert len(written) == 2
    assert [b for b in at.get("download_button") if b.proto.label.startswith("Download predictions")]


def test_predict_a_folder_and_show_engine_errors(at, fake_run, demo, tmp_path):
    write_model(fake_run)
    _open(at)
    at.text_input(key="pr_folder").set_value(str(demo / "images"))
    next(b for b in at.form_submit_button if b.label == "Predict the folder").click().run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    shown = _results(at)
    assert len(shown) == len(list((demo / "images").iterdir()))
    assert not shown["image"].str.startswith("/").any()  # names relative to the chosen folder

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    at.text_input(key="pr_folder").set_value(str(broken))
    next(b for b in at.form_submit_button if b.label == "Predict the folder").click().run(timeout=TIMEOUT)
    assert at.error and "could not predict" in at.error[0].value
    assert "bad.png" in at.code[0].value


def test_a_run_without_a_model_cannot_predict(at, fake_run):
    _open(at)
    assert any("no model.pt" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "pr_go_files"]


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_predict_a_zip_of_images_and_refuse_an_unsafe_one(at, fake_run, demo, workspace):
    write_model(fake_run)
    _open(at)
    images = sorted((demo / "images").iterdir())[:3]
    data = _zip({f"new/{p.name}": p.read_bytes() for p in images})
    at.file_uploader(key="pr_zip").set_value(("screening.zip", data, "application/zip"))
    at.run()
    at.button(key="pr_go_zip").click().run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]
    assert sorted(_results(at)["image"]) == sorted(f"new/{p.name}" for p in images)

    bad = _zip({"../escape.png": images[0].read_bytes(), "notes.exe": b"MZ"})
    at.file_uploader(key="pr_zip").set_value(("bad.zip", bad, "application/zip"))
    at.run()
    at.button(key="pr_go_zip").click().run(timeout=TIMEOUT)
    assert at.error and "2 problems" in at.error[0].value
    problems = next(df.value for df in at.dataframe if "problem" in df.value.columns)
    assert any("'..'" in p for p in problems["problem"]) and any("notes.exe" in p for p in problems["problem"])
    assert len(list((workspace / "predictions").iterdir())) == 1  # the refused request left nothing behind
    assert not (workspace / "escape.png").exists()
