"""Synthetic demo dataset: files and columns, DICOMs with fake patients, pairing, determinism, unanimity, speed."""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread

from engine.commands import demo_data
from engine.data.demo import CLASSES, EXPERTS, generate_demo
from engine.data.images import load_rgb
from engine.errors import InputError

EXPERT_COLS = [e.name for e in EXPERTS]


@pytest.fixture(scope="module")
def demo60(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "d", n=60, seed=3, size=64, n_aux=12)


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_files_columns_and_formats(demo60):
    votes = pd.read_csv(demo60 / "votes.csv", dtype=str)
    assert (
        list(votes.columns) == ["image", "patient_id", *EXPERT_COLS] == ["image", "patient_id", "dr_a", "dr_b", "dr_c"]
    )
    assert len(votes) == 60 and votes["image"].is_unique
    assert set(votes[EXPERT_COLS].stack()) <= set(CLASSES)
    assert all(img.startswith("images/") and (demo60 / img).is_file() for img in votes["image"])
    exts = votes["image"].str.rsplit(".", n=1).str[1].value_counts()
    assert exts["dcm"] >= 3 and exts["png"] > exts.get("jpg", 0)
    for img in votes["image"][votes["image"].str.endswith((".dcm", ".jpg"))]:
        arr = load_rgb(demo60 / img)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8 and arr.max() > 100
    readme = (demo60 / "README.md").read_text()
    assert "SYNTHETIC" in readme and "ground_truth.csv" in readme


def test_dicoms_carry_fake_patients_and_both_layouts(demo60):
    votes = pd.read_csv(demo60 / "votes.csv", dtype=str)
    kinds = set()
    for img in votes["image"][votes["image"].str.endswith(".dcm")]:
        ds = dcmread(demo60 / img)
        assert str(ds.PatientName).startswith("DEMO^PATIENT") and ds.PatientID.startswith("DEMO-")
        kinds.add((ds.PhotometricInterpretation, ds.BitsAllocated))
        if ds.PhotometricInterpretation == "MONOCHROME2":
            assert "WindowCenter" in ds
    assert kinds == {("MONOCHROME2", 16), ("RGB", 8)}


def test_patients_have_two_eyes_and_truth_is_separate(demo60):
    votes = pd.read_csv(demo60 / "votes.csv", dtype=str)
    assert (votes.groupby("patient_id").size() == 2).all()
    eyes = votes["image"].str.extract(r"_(L|R)\.")[0]
    assert (eyes.groupby(votes["patient_id"]).nunique() == 2).all()
    truth = pd.read_csv(demo60 / "ground_truth.csv")
    assert list(truth.columns) == ["image", "true_class", "severity"]
    assert list(truth["image"]) == list(votes["image"])
    assert set(truth["true_class"]) <= set(CLASSES) and truth["severity"].between(0, 1).all()
    assert not {"true_class", "severity"} & set(votes.columns)


def test_aux_dr_set(demo60):
    aux = pd.read_csv(demo60 / "dr_aux" / "labels.csv")
    assert list(aux.columns) == ["image", "level"] and len(aux) == 12
    assert aux["level"].between(0, 4).all() and (aux["level"] == 0).any()
    assert all((demo60 / "dr_aux" / img).is_file() for img in aux["image"])


def test_deterministic_by_seed(tmp_path):
    a = generate_demo(tmp_path / "a", n=8, seed=5, size=48, n_aux=3)
    b = generate_demo(tmp_path / "b", n=8, seed=5, size=48, n_aux=3)
    c = generate_demo(tmp_path / "c", n=8, seed=6, size=48, n_aux=3)
    da, db = _digests(a), _digests(b)
    assert da == db and sum(k.endswith(".dcm") for k in da) >= 3
    assert _digests(c)["votes.csv"] != da["votes.csv"]


def test_refuses_foreign_folder_but_regenerates_a_demo(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an earlier demo"):
        generate_demo(tmp_path / "x", n=4, size=48, n_aux=0)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
    out = generate_demo(tmp_path / "d", n=6, size=48, n_aux=0)
    generate_demo(out, n=4, size=48, n_aux=0)
    assert len(list((out / "images").iterdir())) == 4


def test_command_says_synthetic(tmp_path, capsys):
    p = argparse.ArgumentParser()
    demo_data.add_parser(p)
    args = p.parse_args([str(tmp_path / "cli"), "--n", "4", "--size", "48", "--n-aux", "2", "--seed", "1"])
    assert demo_data.run(args) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert (tmp_path / "cli" / "votes.csv").is_file()


@pytest.mark.slow
def test_400_images_unanimity_balance_and_speed(tmp_path):
    start, cpu_start = time.perf_counter(), time.process_time()
    out = generate_demo(tmp_path / "d400", n=400, seed=0, size=256, n_aux=0)
    # CPU time of this process, so a busy shared machine does not make the check flaky
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - start
    votes = pd.read_csv(out / "votes.csv", dtype=str)
    unanimous = (votes[EXPERT_COLS].nunique(axis=1) == 1).mean()
    assert 0.25 <= unanimous <= 0.45, unanimous
    truth = pd.read_csv(out / "ground_truth.csv")["true_class"].value_counts(normalize=True)
    voted = votes[EXPERT_COLS].stack().value_counts(normalize=True)
    for cls in CLASSES:
        assert truth.get(cls, 0) >= 0.10 and voted.get(cls, 0) >= 0.10, cls
    assert cpu < 60, f"generating 400 images took {cpu:.1f} s of CPU ({wall:.1f} s wall)"


@pytest.mark.parametrize("n", [100, 200, 400])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_split_gives_every_class_a_meta_and_test_share(tmp_path, n, seed):
    """The default split (patient-grouped, stratified) of a demo holds every class in meta (>= 5 %) and test, and
    `engine run`'s checks before training accept it (every class has a meta image, enough training images)."""
    from engine.config import DataConfig, RunConfig, RuntimeConfig
    from engine.data.aggregate import aggregate
    from engine.data.split import make_split
    from engine.data.votes import read_votes
    from engine.pipeline import prepare_data

    out = generate_demo(tmp_path / "d", n=n, seed=seed, size=32, n_aux=0)
    table = read_votes(out, classes=list(CLASSES), check_images=False)
    agg = aggregate(table)
    roles = make_split(table, agg)
    for role, share in (("meta", 0.05), ("test", 0.0)):
        members = agg["majority"][roles == role]
        counts = members.value_counts()
        for cls in CLASSES:
            assert counts.get(cls, 0) >= max(1, share * len(members)), (role, cls, counts.to_dict())
    assert not [w for w in roles.attrs["warnings"] if w.startswith("class")], roles.attrs["warnings"]
    cfg = RunConfig(data=DataConfig(dataset=str(out), classes=",".join(CLASSES)),
                    runtime=RuntimeConfig(out=str(tmp_path / "run")))
    data = prepare_data(cfg)  # raises InputError when `run` would refuse the roles
    assert (data.frame["role"] == "meta").sum() == (roles == "meta").sum()
