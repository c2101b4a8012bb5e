"""make_split: sizes and scaling, determinism, patient grouping, stratification, preset roles; roles file I/O."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.data import schema as S
from engine.data.aggregate import aggregate
from engine.data.split import largest_remainder, make_split, read_roles, split_sizes, write_roles
from engine.data.votes import read_votes
from engine.errors import InputError

CLASSES = "normal,pre-plus,plus"


def _table(root, make_votes, header, rows):
    make_votes(root, header, rows, images=False)
    t = read_votes(root, classes=CLASSES, check_images=False)
    return t, aggregate(t)


@pytest.fixture
def big(tmp_path, make_votes, synthetic):
    """300 images, patients of 2 images, 3 experts."""
    return _table(tmp_path / "big", make_votes, *synthetic(300, seed=0))


def _patient_roles(t, roles):
    df = pd.DataFrame({"pid": t.frame[S.PATIENT_ID], "role": roles})
    return df[df.role != S.UNLABELED].groupby("pid")["role"].nunique()


def test_split_sizes_rule():
    assert split_sizes(200, 300, 622) == (200, 300)  # the ROP study itself is not scaled
    assert split_sizes(200, 300, 100) == (32, 48)  # round(100*200/622), round(100*300/622)
    assert split_sizes(200, 300, 1000) == (200, 300)
    assert split_sizes(0.1, 0.2, 100) == (10, 20)  # fractions of consensus images
    assert split_sizes(10, 0, 100) == (10, 0)
    with pytest.raises(InputError, match="--meta"):
        split_sizes(-1, 3, 100)


def test_largest_remainder():
    assert largest_remainder(10, [6, 3, 1]).tolist() == [6, 3, 1]
    assert largest_remainder(5, [1, 1, 1]).sum() == 5
    assert largest_remainder(4, [0, 0]).tolist() == [0, 0]


def test_deterministic_by_seed(big):
    t, agg = big
    a = make_split(t, agg, meta=20, test=30, seed=1)
    b = make_split(t, agg, meta=20, test=30, seed=1)
    c = make_split(t, agg, meta=20, test=30, seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_roles_come_from_the_rules(big):
    t, agg = big
    roles = make_split(t, agg, meta=20, test=30, seed=0)
    assert set(roles) <= set(S.ROLES)
    held = roles.isin([S.META, S.TEST])
    assert agg[S.CONSENSUS][held].all()  # meta/test only from consensus images
    assert (roles[~agg[S.CONSENSUS] & (agg[S.N_GRADERS] > 0)] == S.TRAIN).all()
    assert (roles == S.META).sum() == 20 and (roles == S.TEST).sum() == 30


def test_patient_grouping(big):
    t, agg = big
    roles = make_split(t, agg, meta=30, test=40, seed=3)
    assert (_patient_roles(t, roles) == 1).all()
    # a patient with any non-consensus image keeps all its images out of meta/test
    mixed = t.frame.groupby(S.PATIENT_ID)[S.PATIENT_ID].transform(lambda s: not agg[S.CONSENSUS][s.index].all())
    mixed = mixed.astype(bool)
    assert mixed.any() and roles[~mixed].isin([S.META, S.TEST]).any()  # the check below is not vacuous
    assert not roles[mixed].isin([S.META, S.TEST]).any()


def test_stratified_by_class(tmp_path, make_votes, synthetic):
    t, agg = _table(tmp_path / "ds", make_votes, *synthetic(400, seed=5, patients=False))
    roles = make_split(t, agg, meta=40, test=60, seed=0)
    cons = agg[S.CONSENSUS]
    share = agg[cons][S.MAJORITY].value_counts(normalize=True)
    for role, n in ((S.META, 40), (S.TEST, 60)):
        got = agg[roles == role][S.MAJORITY].value_counts()
        assert got.sum() == n
        for c in share.index:
            assert abs(got.get(c, 0) - share[c] * n) <= 1.01  # largest remainder: within one image


def test_no_class_without_meta_images(tmp_path, make_votes, synthetic):
    header, rows = synthetic(60, seed=1, patients=False, p_agree=1.0)
    rows = [r for r in rows if r[2] != "plus"]
    rows.append(["img/rare.png", "", "plus", "plus", "plus"])  # the only plus consensus image
    t, agg = _table(tmp_path / "ds", make_votes, header, rows)
    roles = make_split(t, agg, meta=5, test=5, seed=0)
    assert roles.iloc[-1] == S.META
    for c in ("normal", "pre-plus", "plus"):
        assert ((roles == S.META) & (agg[S.MAJORITY] == c)).any()


def test_preset_roles_kept_and_counted(tmp_path, make_votes, synthetic):
    header, rows = synthetic(80, seed=2, patients=False, p_agree=1.0)
    header = [*header[:1], "role", *header[1:]]
    rows = [[r[0], "test" if i < 4 else ("train" if i == 4 else ""), *r[1:]] for i, r in enumerate(rows)]
    t, agg = _table(tmp_path / "ds", make_votes, header, rows)
    roles = make_split(t, agg, meta=8, test=10, seed=0)
    assert roles.iloc[:4].eq(S.TEST).all() and roles.iloc[4] == S.TRAIN
    assert (roles == S.TEST).sum() == 10  # sizes are totals: 4 preset + 6 drawn


def test_preset_role_pulls_the_rest_of_its_patient(tmp_path, make_votes):
    header = ["image", "role", "patient_id", "a", "b"]
    rows = [
        ["p1.png", "test", "P1", "plus", "plus"],
        ["p2.png", "", "P1", "plus", "normal"],
        ["q.png", "", "", "normal", "normal"],
        ["u.png", "", "", "", ""],
    ]
    t, agg = _table(tmp_path / "ds", make_votes, header, rows)
    roles = make_split(t, agg, meta=1, test=1, seed=0)
    assert roles.tolist() == [S.TEST, S.TEST, S.META, S.UNLABELED]


def test_fractions_and_scaling_reported(big):
    t, agg = big
    roles = make_split(t, agg, seed=0)  # defaults 200/300, scaled to the consensus count
    sizes = roles.attrs["sizes"]
    n = sizes["n_consensus"]
    assert sizes["scaled"] and sizes["target"] == {"meta": round(n * 200 / 622), "test": round(n * 300 / 622)}
    frac = make_split(t, agg, meta=0.1, test=0.1, seed=0).attrs["sizes"]["target"]
    assert frac == {"meta": round(0.1 * n), "test": round(0.1 * n)}


def test_write_and_read_roles_round_trip(big, tmp_path):
    t, agg = big
    roles = make_split(t, agg, meta=10, test=10, seed=0)
    path = write_roles(tmp_path / "roles.csv", t.frame[S.IMAGE], roles)
    assert pd.read_csv(path).columns.tolist() == ["image", "role"]
    back = read_roles(path, t)
    assert back.name == S.ROLE and back.tolist() == roles.tolist()
    with pytest.raises(InputError, match="votes.csv"):
        write_roles(tmp_path / "votes.csv", ["a"], ["train"])


def test_read_roles_reports_every_problem(tmp_path, make_votes):
    header = ["image", "patient_id", "a", "b"]
    rows = [
        ["a.png", "P1", "plus", "plus"],
        ["b.png", "P1", "plus", "plus"],
        ["c.png", "", "", ""],
        ["d.png", "", "normal", "normal"],
        ["e.png", "", "normal", "normal"],
    ]
    t, _ = _table(tmp_path / "ds", make_votes, header, rows)
    path = tmp_path / "roles.csv"
    path.write_text("image,role\na.png,meta\nb.png,test\nc.png,test\nzzz.png,train\nd.png,banana\nd.png,train\n")
    with pytest.raises(InputError) as err:
        read_roles(path, t)
    text = str(err.value)
    assert "row 3: image 'c.png' has role 'test' but no expert graded it" in text
    assert "row 4: image 'zzz.png' is not in votes.csv" in text
    assert "row 5: role 'banana' is not one of" in text
    assert "row 6: image 'd.png' is listed again (first at row 5)" in text
    assert "'e.png'" in text and "missing" in text
    assert "patient P1 is in both meta (row 1) and test (row 2)" in text
    assert all(p.fix for p in err.value.problems)


def test_split_cli_writes_roles_and_prints_counts(small_dataset, tmp_path, cli_main, capsys):
    out = tmp_path / "roles.csv"
    assert (
        cli_main(["split", str(small_dataset), "--meta", "2", "--test", "1", "--classes", CLASSES, "--out", str(out)])
        == 0
    )
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(df) == 12 and set(df["role"]) <= set(S.ROLES)
    assert df.loc[df.image == "img/07.png", "role"].item() == S.UNLABELED
    printed = capsys.readouterr().out
    assert "meta" in printed and "plus" in printed and f"wrote {out}" in printed


def test_split_cli_refuses_to_overwrite_votes(small_dataset, cli_main, capsys):
    before = (small_dataset / "votes.csv").read_bytes()
    assert cli_main(["split", str(small_dataset), "--out", str(small_dataset / "votes.csv")]) == 2
    assert (small_dataset / "votes.csv").read_bytes() == before
    assert "overwrite" in capsys.readouterr().err
