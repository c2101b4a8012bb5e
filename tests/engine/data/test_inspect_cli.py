"""`engine inspect`: the --json schema (the app reads it), the numbers in it, and the text report with warnings last."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.data.report import EXPERT_COLUMNS, REPORT_KEYS, inspect_dataset

CLASSES = "normal,pre-plus,plus"


def test_json_schema_and_values(small_dataset, cli_main, capsys):
    assert cli_main(["inspect", str(small_dataset), "--classes", CLASSES, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)  # strict JSON: NaN would fail here
    assert tuple(rep) == REPORT_KEYS
    assert rep["classes"] == ["normal", "pre-plus", "plus"] and rep["experts"] == ["dr_a", "dr_b", "dr_c"]
    c = rep["counts"]
    assert (c["images"], c["graded"], c["unlabeled"], c["consensus"], c["ties"], c["single_grader"]) == (
        12,
        11,
        1,
        7,
        1,
        1,
    )
    assert c["patients"] == 6 and c["roles"] == {"unset": 12}
    assert rep["unanimity_rate"] == pytest.approx(7 / 11)
    assert rep["graders_per_image"] == {"0": 1, "1": 1, "2": 2, "3": 8}
    assert rep["class_balance"]["consensus"] == {"normal": 4, "pre-plus": 2, "plus": 1}
    assert sum(rep["class_balance"]["majority"].values()) == 11
    pw = rep["kappa"]["pairwise"]
    assert set(pw) == set(rep["experts"]) and pw["dr_a"]["dr_b"] == pw["dr_b"]["dr_a"]
    assert -1 <= rep["kappa"]["fleiss"] <= 1 and rep["kappa"]["fleiss_n_images"] == 8
    assert [tuple(r) for r in rep["experts_table"]] == [EXPERT_COLUMNS] * 3
    assert len(rep["confusion"]["dr_a"]) == 3 and sum(map(sum, rep["confusion"]["dr_a"])) == 11
    assert any("graded by one expert only" in w for w in rep["warnings"])


def test_text_report_has_tables_and_rop_class_order(small_dataset, cli_main, capsys):
    assert cli_main(["inspect", str(small_dataset)]) == 0
    out = capsys.readouterr().out
    for needle in ("unanimity rate: 0.64", "Cohen's kappa", "Fleiss' kappa", "agree_majority", "class balance"):
        assert needle in out
    assert "classes (ties go to the later one): normal, pre-plus, plus" in out
    assert "no --classes given" not in out  # the ROP scale is recognised


def test_inspect_dataset_nan_free_when_kappa_undefined(tmp_path, make_votes):
    root = make_votes(tmp_path / "ds", ["image", "a", "b"], [["x.png", "n", "n"], ["y.png", "n", "p"]])
    rep = inspect_dataset(root)
    json.dumps(rep, allow_nan=False)  # raises on NaN
    assert rep["kappa"]["pairwise"]["a"]["b"] is not None
    rep1 = inspect_dataset(make_votes(tmp_path / "one", ["image", "a", "b"], [["x.png", "n", "n"], ["y.png", "p", ""]]))
    assert rep1["kappa"]["pairwise"]["a"]["b"] is None  # one shared image, both 'n': kappa undefined -> null


def test_weighted_kappa_on_a_severity_scale_matches_sklearn(tmp_path, make_votes):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    scale = ["normal", "pre-plus", "plus"]
    a = rng.integers(0, 3, 60)
    b = np.clip(a + rng.choice([-2, -1, 0, 0, 0, 1], 60), 0, 2)  # mostly adjacent disagreements, a few 2-step ones
    rows = [[f"i{i}.png", scale[x], scale[y]] for i, (x, y) in enumerate(zip(a, b, strict=True))]
    rep = inspect_dataset(make_votes(tmp_path / "ds", ["image", "e1", "e2"], rows), check_images=False)
    assert rep["ordinal"] is True
    for w in ("linear", "quadratic"):
        want = cohen_kappa_score(a, b, labels=[0, 1, 2], weights=w)
        assert rep["kappa"][f"pairwise_{w}"]["e1"]["e2"] == pytest.approx(want)
        assert rep["kappa"][f"mean_pairwise_{w}"] == pytest.approx(want)
    assert rep["kappa"]["mean_pairwise_quadratic"] != pytest.approx(rep["kappa"]["mean_pairwise"])
    nominal = inspect_dataset(make_votes(tmp_path / "nom", ["image", "e1", "e2"],
                                         [["x.png", "cat", "dog"], ["y.png", "dog", "dog"]]), check_images=False)
    assert nominal["ordinal"] is False and "mean_pairwise_linear" not in nominal["kappa"]
