"""engine.csv_cells: which cells are neutralised, and the readers' inverse."""

import pandas as pd

from engine import atomic
from engine.csv_cells import neutralise, neutralise_frame, restore


def test_text_cells_and_names_are_neutralised_numbers_are_not(tmp_path):
    frame = pd.DataFrame({"note": ["=1+1", "ok", "-x", "'=kept", None], "-col": [-1.5, 2.0, 0.0, 1.0, 3.0]})
    safe = neutralise_frame(frame)
    assert list(safe.columns) == ["note", "'-col"]
    assert safe["note"].tolist()[:4] == ["'=1+1", "ok", "'-x", "'=kept"] and safe["note"].isna().iloc[4]
    assert safe["'-col"].tolist() == [-1.5, 2.0, 0.0, 1.0, 3.0]
    assert frame["note"].iloc[0] == "=1+1"  # the caller's frame is not changed
    atomic.write_csv(tmp_path / "x.csv", frame)
    assert (tmp_path / "x.csv").read_bytes().split(b"\r\n")[1] == b"'=1+1,-1.5"


def test_restore_is_the_inverse_for_what_neutralise_changed():
    for text in ["=1", "+1", "-1", "@a", "\t=1", "\r=1", "plain", "", "'", "'plain"]:
        assert restore(neutralise(text)) == text
    assert restore("'plain") == "'plain" and restore(3.5) == 3.5
