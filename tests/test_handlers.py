"""Atomic checkpoints, resuming and per-epoch seeding (ideal_components.handlers), in process."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader
from monai.handlers import CheckpointSaver
from monai.transforms import RandGaussianNoised

from ideal_components.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckpointResumer,
    EpochSeedHandler,
    NullSummaryWriter,
    attach_on_main_process,
    find_latest_checkpoint,
    rank_handlers,
    summary_writer,
    validate_last_epoch,
)


def _train_engine(net, opt, max_epochs=3, epoch_length=4):
    def step(engine, batch):
        opt.zero_grad()
        loss = net(torch.ones(2, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    engine.state.max_epochs = max_epochs
    return engine


# a fresh interpreter (not a fork of the threaded test process, which can deadlock) that starts saving epoch 2 and
# SIGKILLs itself while torch.save is writing: pickling the last object kills the process
_KILL_DURING_SAVE = """
import os, signal, sys, torch
from ideal_components.handlers import AtomicDiskSaver

class KillWhilePickled:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

AtomicDiskSaver(sys.argv[1])({"network": {"w": torch.zeros(1_000_000)}, "x": KillWhilePickled()},
                             "train_checkpoint_epoch=2.pt")
"""


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    saver = AtomicDiskSaver(str(tmp_path))
    saver({"network": {"w": torch.ones(3)}}, "train_checkpoint_epoch=1.pt")
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "train_checkpoint_epoch=2.pt").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".train_checkpoint_epoch=2.pt")]
    assert leftovers, "the interrupted save should have left its temporary file"
    path, checkpoint = find_latest_checkpoint(str(tmp_path), "train")
    assert path.endswith("train_checkpoint_epoch=1.pt") and torch.equal(checkpoint["network"]["w"], torch.ones(3))
    # resuming cleans the temporary files of interrupted saves
    net = torch.nn.Linear(1, 1)
    CheckpointResumer(str(tmp_path), "train", {"network": net}, enabled=True)._remove_stale_temporaries()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fixed_name_is_replaced_not_removed(tmp_path):
    saver = AtomicDiskSaver(str(tmp_path), filename="model.pt")
    saver({"w": torch.ones(1)}, "model_key_metric=0.5.pt")
    saver.remove("model_key_metric=0.5.pt")  # what ignite does before saving a better model under the same name
    assert (tmp_path / "model.pt").is_file()
    saver({"w": torch.zeros(1)}, "model_key_metric=0.7.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    rotating = AtomicDiskSaver(str(tmp_path))
    rotating({"w": torch.ones(1)}, "train_checkpoint_epoch=1.pt")
    rotating.remove("train_checkpoint_epoch=1.pt")
    assert not (tmp_path / "train_checkpoint_epoch=1.pt").exists()


def test_find_latest_skips_damaged_and_foreign_files(tmp_path):
    torch.save({"network": {"w": torch.ones(1)}}, tmp_path / "train_checkpoint_epoch=2.pt")
    torch.save({"network": {"w": torch.ones(1) * 9}}, tmp_path / "train_checkpoint_epoch=10.pt")
    (tmp_path / "train_checkpoint_epoch=11.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"network": {"w": torch.ones(1)}}, tmp_path / "pretrain_checkpoint_epoch=50.pt")
    path, checkpoint = find_latest_checkpoint(str(tmp_path), "train")
    assert path.endswith("train_checkpoint_epoch=10.pt")  # numeric order, not text order; 11 is damaged
    assert find_latest_checkpoint(str(tmp_path / "absent"), "train") == (None, None)


def test_saved_files_have_default_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicDiskSaver(str(tmp_path))({"a": torch.ones(1)}, "x.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.pt").stat().st_mode) == 0o644  # mkstemp alone gives 0o600


def _run_with_checkpoints(tmp_path, max_epochs, resume, net, opt):
    engine = _train_engine(net, opt, max_epochs)
    save = {"network": net, "optimizer": opt, "trainer": engine}
    saver = AtomicCheckpointSaver(str(tmp_path), save_dict=save, file_prefix="train", save_interval=1, n_saved=2)
    saver.attach(engine)
    resumer = CheckpointResumer(str(tmp_path), "train", save, saver=saver, enabled=resume)
    resumer.attach(engine)
    engine.run(range(4), max_epochs=max_epochs)
    return engine, resumer


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    ref_net = torch.nn.Linear(3, 1)
    net = torch.nn.Linear(3, 1)
    net.load_state_dict(ref_net.state_dict())
    ref_opt, opt = torch.optim.Adam(ref_net.parameters(), 0.1), torch.optim.Adam(net.parameters(), 0.1)
    _run_with_checkpoints(tmp_path / "ref", 4, False, ref_net, ref_opt)

    _run_with_checkpoints(tmp_path / "cut", 2, False, net, opt)  # "killed" after epoch 2
    net2 = torch.nn.Linear(3, 1)  # a fresh process: new objects
    opt2 = torch.optim.Adam(net2.parameters(), 0.1)
    engine, resumer = _run_with_checkpoints(tmp_path / "cut", 4, True, net2, opt2)  # max_epochs raised to 4
    assert resumer.resumed_from.endswith("train_checkpoint_epoch=2.pt")
    assert engine.state.epoch == 4 and engine.state.iteration == 16
    assert torch.equal(net2.weight, ref_net.weight) and torch.equal(net2.bias, ref_net.bias)
    # the resumed saver kept rotating the interrupted run's files (n_saved=2)
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.pt")) == [
        "train_checkpoint_epoch=3.pt",
        "train_checkpoint_epoch=4.pt",
    ]


def test_resume_errors(tmp_path):
    net = torch.nn.Linear(3, 1)
    torch.save({"network": net.state_dict()}, tmp_path / "train_checkpoint_epoch=1.pt")
    opt = torch.optim.Adam(net.parameters())
    engine = _train_engine(net, opt)
    CheckpointResumer(str(tmp_path), "train", {"network": net, "optimizer": opt}).attach(engine)
    with pytest.raises(KeyError, match="has no \\['optimizer'\\]"):
        engine.run(range(4), max_epochs=1)
    with pytest.raises(ValueError, match="load_dict"):
        CheckpointResumer(str(tmp_path), "train", {})
    # a disabled resumer attaches nothing
    engine = _train_engine(net, opt)
    CheckpointResumer(str(tmp_path), "train", {"network": net}, enabled=False).attach(engine)
    assert not engine.has_event_handler(CheckpointResumer, Events.STARTED)


def test_best_model_saver_state_round_trip(tmp_path):
    net = torch.nn.Linear(1, 1)
    saver = AtomicCheckpointSaver(
        str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )
    saver.load_state_dict({"_saved": [(0.7, "model.pt")]})
    assert saver.state_dict() == {"_saved": [(0.7, "model.pt")]}
    plain = AtomicCheckpointSaver(str(tmp_path), save_dict={"model": net}, save_interval=1)
    assert plain.state_dict() == {"_saved": []}
    assert isinstance(plain, CheckpointSaver)


def _epoch_draws(epochs, start_epoch=1, epoch_length=None, num_workers=0):
    data = [{"image": np.zeros((1, 4, 4), np.float32)} for _ in range(6)]
    dataset = CacheDataset(data, RandGaussianNoised("image", prob=1.0, std=1.0), progress=False)
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=num_workers)
    draws = {}

    def step(engine, batch):
        draws.setdefault(engine.state.epoch, []).append((batch["image"].sum().item(), torch.rand(1).item()))

    engine = Engine(step)
    EpochSeedHandler(seed=3, rank=0).attach(engine)
    engine.state.epoch = start_epoch - 1
    engine.state.iteration = (start_epoch - 1) * (epoch_length or len(loader))
    engine.state.max_epochs = epochs
    engine.state.epoch_length = epoch_length or len(loader)
    engine.run(loader)
    return draws


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_seed_makes_an_epoch_independent_of_the_previous_ones(num_workers):
    full = _epoch_draws(3, num_workers=num_workers)
    resumed = _epoch_draws(3, start_epoch=3, num_workers=num_workers)  # as after a resume at epoch 2
    assert resumed[3] == full[3]
    assert full[2] != full[3]
    # with epoch_length shorter than the loader the iterator is restarted each epoch
    short = _epoch_draws(3, epoch_length=2, num_workers=num_workers)
    short_resumed = _epoch_draws(3, start_epoch=3, epoch_length=2, num_workers=num_workers)
    assert short_resumed[3] == short[3]


def test_epoch_seed_depends_on_seed_epoch_and_rank():
    a = EpochSeedHandler(seed=1, rank=0)
    assert a.epoch_seed(2) == EpochSeedHandler(seed=1, rank=0).epoch_seed(2)
    assert len({a.epoch_seed(2), a.epoch_seed(3), EpochSeedHandler(1, rank=1).epoch_seed(2)}) == 3
    assert EpochSeedHandler(seed=2, rank=0).epoch_seed(2) != a.epoch_seed(2)


def test_null_summary_writer_writes_nothing(tmp_path):
    writer = NullSummaryWriter()
    writer.add_scalar("x", 1.0, 1)
    writer.flush()
    writer.close()
    assert not hasattr(writer, "__array__")


def test_rank_handlers_and_summary_writer(tmp_path):
    assert rank_handlers(True, ["seed", "val"], ["bar", "stats"], ["tb"]) == ["seed", "val", "bar", "stats", "tb"]
    assert rank_handlers(False, ("seed",), ["bar"]) == ["seed"]
    assert rank_handlers(True, []) == []
    assert isinstance(summary_writer(str(tmp_path / "other"), main_process=False), NullSummaryWriter)
    assert not (tmp_path / "other").exists()
    writer = summary_writer(str(tmp_path / "main"), main_process=True)
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    assert list((tmp_path / "main").glob("events.out.tfevents.*"))


def test_attach_on_main_process():
    class Recorder:
        def __init__(self):
            self.engines = []

        def attach(self, engine):
            self.engines.append(engine)

    engine, handler = Engine(lambda e, b: None), Recorder()
    attach_on_main_process(handler, engine, main_process=False)
    assert handler.engines == []
    attach_on_main_process(handler, engine, main_process=True)
    assert handler.engines == [engine]


@pytest.mark.parametrize("max_epochs, interval, expected", [(5, 2, [5]), (4, 2, []), (3, 1, []), (1, 5, [1])])
def test_validate_last_epoch(max_epochs, interval, expected):
    """The last epoch is validated once more only when ValidationHandler(interval) skipped it."""
    runs = []

    class Evaluator:
        def run(self, epoch):
            runs.append(epoch)

    trainer = Engine(lambda e, b: None)
    trainer.run([0, 1], max_epochs=max_epochs)
    validate_last_epoch(Evaluator(), trainer, interval)
    assert runs == expected
