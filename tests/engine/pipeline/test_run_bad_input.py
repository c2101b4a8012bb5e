"""`engine run` refuses bad options before training, with a clear message, exit code 2 and nothing written."""

import pytest

from engine.cli import main
from tests.engine.pipeline.tinydata import run_args


@pytest.mark.parametrize("extra, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--backbone", "resnet_does_not_exist"], "unknown backbone"),
    (["--warmup-epochs", "3"], "warm-up (3) must be >= 0 and < --epochs (3)"),
    (["--image-size", "8"], "too small for test_resnet"),
    (["--lr", "-1"], "--lr: must be positive"),
    (["--batch-size", "1"], "--batch-size: must be >= 2"),
    (["--mslg-beta", "-5", "--method", "mslg"], "--mslg-beta: must be >= 0"),
    (["--mslg-alpha", "0.1"], "applies to method 'mslg', not 'ce'"),
    (["--classes", "normal,plus"], "not in --classes"),
    (["--weights", "/nonexistent/w.pt"], "weight file not found"),
    (["--device", "tpu"], "unknown device"),
])
def test_bad_option(tiny_dataset, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(run_args(tiny_dataset, out, "ce", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_meta_set_problems(tiny_dataset, tmp_path, capsys):
    import pandas as pd

    images = pd.read_csv(tiny_dataset / "votes.csv")["image"]
    roles = tmp_path / "roles.csv"
    pd.DataFrame({"image": images, "role": "train"}).to_csv(roles, index=False)
    out = tmp_path / "run"
    assert main(run_args(tiny_dataset, out, "mslg", "--roles", str(roles))) == 2
    assert "the meta set is empty" in capsys.readouterr().err
    # a class without meta images: only 'normal' consensus images in the meta set
    votes = pd.read_csv(tiny_dataset / "votes.csv")
    unanimous = (votes[["dr_a", "dr_b", "dr_c"]].nunique(axis=1) == 1)
    role = ["meta" if u and a == "normal" else "train" for u, a in zip(unanimous, votes["dr_a"], strict=True)]
    pd.DataFrame({"image": images, "role": role}).to_csv(roles, index=False)
    assert main(run_args(tiny_dataset, out, "mslg", "--roles", str(roles))) == 2
    assert "have no meta image" in capsys.readouterr().err
    assert not out.exists()


def test_existing_run_folder_is_not_overwritten(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "labels.csv").write_text("precious\n")
    assert main(run_args(tiny_dataset, out, "ce")) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "labels.csv").read_text() == "precious\n"


def test_unknown_config_keys_are_errors(tiny_dataset, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedule:\n  epochz: 3\n")
    assert main([*run_args(tiny_dataset, tmp_path / "run", "ce"), "--config", str(cfg)]) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err


def test_yaml_config_is_used_and_cli_wins(tiny_dataset, tmp_path):
    import json

    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedule:\n  epochs: 2\n  momentum: 0.5\nmethod_params:\n  k: 5\n")
    out = tmp_path / "run"
    args = run_args(tiny_dataset, out, "mslg")
    args[args.index("--epochs") + 1] = "2"
    assert main([*args, "--config", str(cfg), "--mslg-alpha", "0.25"]) == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["schedule"]["momentum"] == 0.5
    assert resolved["method_params"]["k"] == 5 and resolved["method_params"]["alpha"] == 0.25


def test_a_dataset_with_one_class_is_refused(tiny_dataset, tmp_path, capsys):
    """Every expert grades 'normal': training would end "successfully" with accuracy 1.0 and nothing learned."""
    import shutil

    one = tmp_path / "one"
    shutil.copytree(tiny_dataset, one)
    lines = (one / "votes.csv").read_text().splitlines()
    rows = [line.split(",")[:2] + ["normal"] * 3 for line in lines[1:]]
    (one / "votes.csv").write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    out = tmp_path / "run"
    args = run_args(one, out, "ce")
    args = args[:args.index("--classes")] + args[args.index("--classes") + 2:]  # no --classes: classes from votes
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "only one class is used (normal); a classifier needs at least two classes" in err
    assert not out.exists()
