"""Roles as the run uses them: a graded image with role=unlabeled trains without its votes."""

from __future__ import annotations

import numpy as np

from engine.config import DataConfig, RunConfig, RuntimeConfig
from engine.data.aggregate import aggregate
from engine.data.demo import CLASSES, generate_demo
from engine.data.split import make_split, write_roles
from engine.data.votes import read_votes
from engine.pipeline import _tensors, prepare_data


def test_unlabeled_role_keeps_the_majority_but_trains_without_it(tmp_path):
    dataset = generate_demo(tmp_path / "d", n=60, seed=0, size=32, n_aux=0)
    table = read_votes(dataset, classes=list(CLASSES), check_images=False)
    agg = aggregate(table)
    roles = make_split(table, agg).to_numpy().copy()
    graded_train = np.flatnonzero((roles == "train") & (agg["majority"].to_numpy() != ""))
    patient = table.frame["patient_id"].iat[graded_train[0]]
    mine = np.flatnonzero(table.frame["patient_id"].to_numpy() == patient)
    roles[mine] = "unlabeled"  # a whole patient, so no patient straddles sets
    write_roles(tmp_path / "roles.csv", list(table.frame["image"]), list(roles))
    cfg = RunConfig(data=DataConfig(dataset=str(dataset), classes=",".join(CLASSES), roles=str(tmp_path / "roles.csv")),
                    runtime=RuntimeConfig(out=str(tmp_path / "run")))

    data = prepare_data(cfg)
    rows = data.frame.iloc[mine]
    assert (rows["role"] == "unlabeled").all()
    assert (rows["_major_idx"] >= 0).all()  # the votes stay: flags and export still see the majority
    assert (rows["_target_idx"] == -1).all()
    pixels = np.zeros((len(data.frame), 32, 32, 3), np.uint8)
    train, train_rows = _tensors(data, pixels, ("train", "unlabeled"))
    targets = dict(zip(train_rows.tolist(), train.targets.tolist(), strict=True))
    assert all(targets[i] == -1 for i in mine)
    others = [i for i in graded_train if i not in set(mine)]
    assert all(targets[i] == data.frame["_major_idx"].iat[i] for i in others)
    # training on the vote shares (data.targets=votes): an unlabeled row's votes stay out as well
    soft, soft_rows = _tensors(data, pixels, ("train", "unlabeled"), soft=True)
    shares = dict(zip(soft_rows.tolist(), soft.soft.tolist(), strict=True))
    assert all(np.allclose(shares[i], 1 / len(CLASSES)) for i in mine)
    assert any(max(shares[i]) > 0.5 for i in others)  # graded train rows carry their votes
