"""Resume after SIGKILL: real bundle runs killed mid-epoch and restarted with ``--resume True`` end with the same
weights as an uninterrupted run (pre-training and fine-tuning)."""

from __future__ import annotations

import pytest
import torch
from bundle_runs import TINY, kill_config, run_bundle_ok, run_bundle_process, tiny_acdc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return tiny_acdc(tmp_path_factory.mktemp("resume_data"))[1]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _kill_and_resume(config, prepared, root, tmp_path, kill_at, args):
    common = [*TINY, "--dataset_dir", str(prepared), *args]
    killer = kill_config(tmp_path / f"kill_{config}", "ideal_acdc", config)
    proc = run_bundle_process("ideal_acdc", [config, killer], root, *common, "--kill_at_iteration", str(kill_at))
    assert proc.returncode == -9, f"the run was not killed (exit {proc.returncode})\n{proc.stderr[-3000:]}"
    out = run_bundle_ok("ideal_acdc", [config], root, *common, "--resume", "True")
    return out


def test_pretrain_resumes_to_identical_weights(prepared, tmp_path, monkeypatch):
    # one intra-op thread: with 2 threads in the main process and 2 loader workers competing for the 2 cores, two
    # uninterrupted runs already differ in the last bits (measured; the op was not identified; docs/operations.md)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["--max_epochs", "3", "--num_workers", "2"]  # workers: their seeds must also be restored
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    run_bundle_ok("ideal_acdc", ["pretrain.json"], ref, *TINY, "--dataset_dir", str(prepared), *args)
    epoch_length = _load(ref / "models" / "pretrain_checkpoint_epoch=3.pt")["trainer"]["epoch_length"]
    out = _kill_and_resume("pretrain.json", prepared, cut, tmp_path, epoch_length + 2, args)  # mid epoch 2
    assert "resume: restored" in out and "pretrain_checkpoint_epoch=1.pt (epoch 1)" in out
    a, b = _load(ref / "models" / "pretrain_checkpoint_epoch=3.pt"), _load(
        cut / "models" / "pretrain_checkpoint_epoch=3.pt"
    )
    _assert_same_state(a["network"], b["network"])  # includes the momentum (key) encoder
    assert a["trainer"] == b["trainer"]
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    _assert_same_state(_load(ref / "models" / "pretrained_encoder.pt"), _load(cut / "models" / "pretrained_encoder.pt"))
    # n_saved=1 still rotates the files of the interrupted run
    assert sorted(p.name for p in (cut / "models").glob("pretrain_checkpoint_*.pt")) == [
        "pretrain_checkpoint_epoch=3.pt"
    ]


def test_train_resumes_to_identical_weights_and_best_model(prepared, tmp_path):
    args = ["--max_epochs", "3", "--val_interval", "1", "--use_pretrained", "False"]
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    run_bundle_ok("ideal_acdc", ["train.json"], ref, *TINY, "--dataset_dir", str(prepared), *args)
    a = _load(ref / "models" / "train_checkpoint_epoch=3.pt")
    out = _kill_and_resume("train.json", prepared, cut, tmp_path, a["trainer"]["epoch_length"] + 1, args)
    assert "train_checkpoint_epoch=1.pt (epoch 1)" in out
    b = _load(cut / "models" / "train_checkpoint_epoch=3.pt")
    _assert_same_state(a["network"], b["network"])
    assert a["trainer"] == b["trainer"]
    # the best-model saver's record survived the kill: model.pt is the same best model
    assert a["best_model_saver"] == b["best_model_saver"]
    _assert_same_state(_load(ref / "models" / "model.pt"), _load(cut / "models" / "model.pt"))


def test_resume_without_checkpoint_starts_from_scratch(prepared, tmp_path):
    out = run_bundle_ok(
        "ideal_acdc",
        ["pretrain.json"],
        tmp_path / "run",
        *TINY,
        "--dataset_dir",
        str(prepared),
        "--max_epochs",
        "1",
        "--resume",
        "True",
    )
    assert "starting from scratch" in out
    assert (tmp_path / "run" / "models" / "pretrained_encoder.pt").is_file()
