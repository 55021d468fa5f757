"""The private attributes of MONAI and ignite that the package relies on, each used in one place only.

A new pinned version of either library may rename or drop them; these tests say which use broke and where, before
a training run does:

- ``monai.handlers.CheckpointSaver._final_checkpoint`` / ``_key_metric_checkpoint`` / ``_interval_checkpoint``
  (ignite ``Checkpoint`` objects or ``None``): :class:`ideal_components.handlers.AtomicCheckpointSaver` swaps their
  ``save_handler`` for an atomic one and keeps the interval list resumable. MONAI gives no public way to choose
  the save handler.
- ``ignite.engine.Engine._dataloader_iter``: :class:`ideal_components.handlers.EpochSeedHandler` restarts an
  iterator left over from the previous epoch (``epoch_length`` shorter than the loader) so that the epoch's workers
  start from the epoch's seeds. ignite has no public "is an iterator open" query.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

from ideal_components.handlers import AtomicCheckpointSaver, AtomicDiskSaver

PACKAGE = Path(__file__).resolve().parents[1] / "ideal_components"
SAVER_FIELDS = ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")


def test_monai_checkpoint_saver_fields(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = CheckpointSaver(
        str(tmp_path), {"network": net}, save_final=True, save_key_metric=True, save_interval=1, n_saved=1
    )
    for name in SAVER_FIELDS:
        checkpoint = getattr(saver, name)
        assert isinstance(checkpoint, Checkpoint), f"CheckpointSaver.{name} is no longer an ignite Checkpoint"
        assert hasattr(checkpoint, "save_handler") and hasattr(checkpoint, "include_self")
    assert getattr(CheckpointSaver(str(tmp_path), {"network": net}), "_interval_checkpoint") is None
    # and the subclass really replaced every save handler
    atomic = AtomicCheckpointSaver(
        str(tmp_path), {"network": net}, save_final=True, save_key_metric=True, save_interval=1, n_saved=1
    )
    assert all(isinstance(getattr(atomic, n).save_handler, AtomicDiskSaver) for n in SAVER_FIELDS)


def test_ignite_engine_dataloader_iter():
    seen = []

    def step(engine, batch):
        seen.append(getattr(engine, "_dataloader_iter", "missing"))

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(("epoch", e._dataloader_iter)))
    engine.run(list(range(4)), max_epochs=2, epoch_length=2)
    assert "missing" not in seen, "ignite.Engine has no _dataloader_iter any more"
    epoch_starts = [it for it in seen if isinstance(it, tuple)]
    assert epoch_starts[0][1] is None  # no iterator before the first epoch
    assert epoch_starts[1][1] is not None  # the first epoch's iterator is still open (epoch_length < len(data))


def test_each_private_use_is_in_one_place():
    """The private names above are read in ideal_components/handlers.py only."""
    names = {*SAVER_FIELDS, "_dataloader_iter"}
    users = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            used = (isinstance(node, ast.Attribute) and node.attr in names) or (
                isinstance(node, ast.Constant) and node.value in names
            )
            if used:
                users.setdefault(path.relative_to(PACKAGE).as_posix(), set()).add(
                    node.attr if isinstance(node, ast.Attribute) else node.value
                )
    assert set(users) == {"handlers.py"}, users
