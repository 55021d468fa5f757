"""Tests of LabeledUnlabeledBatchSampler, set_loader_epoch and evaluation_sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset

from ideal_components.data.sampler import LabeledUnlabeledBatchSampler, evaluation_sampler, set_loader_epoch

FLAGS = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]  # 4 labelled, 16 unlabelled
LAB = {i for i, f in enumerate(FLAGS) if f}
UNL = {i for i, f in enumerate(FLAGS) if not f}


def test_batch_composition_and_coverage():
    s = LabeledUnlabeledBatchSampler(FLAGS, batch_size=6, labeled_batch_size=2, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 16 // 4
    for b in batches:
        assert len(b) == 6
        assert set(b[:2]) <= LAB and set(b[2:]) <= UNL
    seen_unl = [i for b in batches for i in b[2:]]
    assert sorted(seen_unl) == sorted(UNL)  # one pass, no repeats (16 divisible by 4)


def test_labeled_stream_cycles_and_reshuffles():
    flags = [1, 1, 1] + [0] * 30
    s = LabeledUnlabeledBatchSampler(flags, batch_size=4, labeled_batch_size=3, seed=0)
    lab = [b[:3] for b in s]
    assert len(lab) == 30
    for chunk in lab:  # the 3-element labelled stream: each batch is exactly one reshuffled pass
        assert sorted(chunk) == [0, 1, 2]
    assert len({tuple(c) for c in lab}) > 1


def test_drop_last_and_padding():
    flags = [1] + [0] * 10
    s = LabeledUnlabeledBatchSampler(flags, batch_size=4, labeled_batch_size=1, drop_last=True)
    assert len(s) == 3 and len(list(s)) == 3
    s = LabeledUnlabeledBatchSampler(flags, batch_size=4, labeled_batch_size=1, drop_last=False)
    batches = list(s)
    assert len(s) == len(batches) == 4 and all(len(b) == 4 for b in batches)
    assert {i for b in batches for i in b[1:]} == set(range(1, 11))


def test_determinism_per_seed_and_epoch():
    def run(seed, epoch):
        s = LabeledUnlabeledBatchSampler(FLAGS, batch_size=6, labeled_batch_size=2, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 1) == run(0, 1)
    assert run(0, 1) != run(0, 2)
    assert run(0, 1) != run(1, 1)


def test_no_shuffle_is_dataset_order():
    s = LabeledUnlabeledBatchSampler(FLAGS, batch_size=6, labeled_batch_size=2, shuffle=False)
    first = next(iter(s))
    assert first == [0, 3, 1, 2, 4, 5]


@pytest.mark.parametrize("drop_last", [True, False])
def test_distributed_shards_disjoint_equal_length(drop_last):
    flags = [1] * 6 + [0] * 23
    samplers = [
        LabeledUnlabeledBatchSampler(
            flags, batch_size=5, labeled_batch_size=2, num_replicas=2, rank=r, seed=7, drop_last=drop_last
        )
        for r in range(2)
    ]
    for s in samplers:
        s.set_epoch(4)
    out = [list(s) for s in samplers]
    assert len(samplers[0]) == len(samplers[1]) == len(out[0]) == len(out[1])
    assert len(out[0]) == (23 // 6 if drop_last else -(-23 // 6))
    unl = [{i for b in o for i in b[2:]} for o in out]
    lab = [{i for b in o for i in b[:2]} for o in out]
    if drop_last:
        assert not unl[0] & unl[1]
    else:
        assert unl[0] | unl[1] == set(range(6, 29))
    assert not lab[0] & lab[1]  # 6 labelled, 2 ranks: disjoint halves
    assert lab[0] | lab[1] == set(range(6))


def test_all_labeled():
    flags = [1] * 10
    s = LabeledUnlabeledBatchSampler(flags, batch_size=4, labeled_batch_size=2, drop_last=False)
    batches = list(s)
    assert len(batches) == len(s) == 3 and all(len(b) == 4 for b in batches)
    assert {i for b in batches for i in b} == set(range(10))
    # labeled_batch_size == batch_size ignores the unlabelled indices
    s = LabeledUnlabeledBatchSampler([1, 1, 0, 0, 1, 1], batch_size=2, labeled_batch_size=2)
    assert sorted(i for b in s for i in b) == [0, 1, 4, 5]


def test_errors():
    with pytest.raises(ValueError, match="no labelled index"):
        LabeledUnlabeledBatchSampler([0, 0, 0], batch_size=2, labeled_batch_size=1)
    with pytest.raises(ValueError, match="labeled_batch_size"):
        LabeledUnlabeledBatchSampler([1, 0], batch_size=2, labeled_batch_size=3)
    with pytest.raises(ValueError, match="labeled_batch_size"):
        LabeledUnlabeledBatchSampler([1, 0], batch_size=2, labeled_batch_size=0)
    with pytest.raises(ValueError, match="0/1"):
        LabeledUnlabeledBatchSampler([1, 2], batch_size=2, labeled_batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        LabeledUnlabeledBatchSampler([1, 0], batch_size=2, labeled_batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="too few"):
        LabeledUnlabeledBatchSampler([1, 0, 0], batch_size=4, labeled_batch_size=1, drop_last=True)


def test_accepts_tensor_and_bool_flags():
    a = LabeledUnlabeledBatchSampler(torch.tensor(FLAGS), batch_size=6, labeled_batch_size=2)
    b = LabeledUnlabeledBatchSampler(np.asarray(FLAGS, dtype=bool), batch_size=6, labeled_batch_size=2)
    assert list(a) == list(b)


def test_monai_dataloader_and_set_loader_epoch():
    data = [{"x": torch.tensor([float(i)]), "labeled": f} for i, f in enumerate(FLAGS)]
    sampler = LabeledUnlabeledBatchSampler([d["labeled"] for d in data], batch_size=6, labeled_batch_size=2, seed=1)
    loader = DataLoader(Dataset(data), batch_sampler=sampler, num_workers=0)
    assert len(loader) == len(sampler)
    epochs = {}

    def step(engine, batch):
        assert batch["x"].shape == (6, 1)
        assert batch["labeled"].tolist() == [1, 1, 0, 0, 0, 0]
        epochs.setdefault(engine.state.epoch, []).append(batch["x"].reshape(-1).tolist())

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: set_loader_epoch(loader, e.state.epoch))
    engine.run(loader, max_epochs=2)
    assert sampler.epoch == 2
    assert epochs[1] != epochs[2]
    # a fresh sampler set to epoch 2 (a resumed run) gives epoch 2's order
    fresh = LabeledUnlabeledBatchSampler([d["labeled"] for d in data], batch_size=6, labeled_batch_size=2, seed=1)
    fresh.set_epoch(2)
    assert [[float(i) for i in b] for b in fresh] == epochs[2]


def _passes(sampler: LabeledUnlabeledBatchSampler, count: int) -> list[list[list[int]]]:
    """``count`` passes over a DataLoader within one epoch, as ignite makes them when epoch_length > len(loader)."""
    loader = DataLoader(Dataset(list(range(len(sampler.labeled_indices) + len(sampler.unlabeled_indices)))),
                        batch_sampler=sampler, num_workers=0)  # fmt: skip
    return [[b.tolist() for b in loader] for _ in range(count)]


def test_labeled_only_passes_within_an_epoch_continue_the_stream():
    """The sweeps' 1-volume case: 10 labelled slices, batch 8, epoch_length longer than the loader. Every pass of the
    epoch is a different batch, and the passes together show every slice about equally often."""
    sampler = LabeledUnlabeledBatchSampler([1] * 10, batch_size=8, labeled_batch_size=8, seed=0)
    sampler.set_epoch(1)
    passes = _passes(sampler, 4)
    orders = [tuple(p[0]) for p in passes]
    assert all(len(p) == 1 for p in passes) and len(set(orders)) == 4
    counts = np.bincount([i for o in orders for i in o], minlength=10)
    assert counts.min() >= 3 and counts.sum() == 32
    # setting the same epoch again (the trainers and EpochSeedHandler both do) does not restart the stream
    sampler.set_epoch(1)
    assert tuple(next(iter(sampler))) not in orders[:1]
    # a new epoch starts anew; the same epoch in a fresh sampler (a resumed run) repeats the passes exactly
    again = LabeledUnlabeledBatchSampler([1] * 10, batch_size=8, labeled_batch_size=8, seed=0)
    again.set_epoch(1)
    assert _passes(again, 4) == passes
    sampler.set_epoch(2)
    assert _passes(sampler, 4) != passes


def test_mixed_passes_within_an_epoch_continue_both_streams():
    flags = [1] * 10 + [0] * 12
    sampler = LabeledUnlabeledBatchSampler(flags, batch_size=8, labeled_batch_size=4, seed=0)
    sampler.set_epoch(3)
    passes = _passes(sampler, 4)  # 3 batches of 4 unlabelled per pass
    labeled = [i for p in passes for b in p for i in b[:4]]
    unlabeled = [tuple(i for b in p for i in b[4:]) for p in passes]
    assert len(set(unlabeled)) == 4 and all(sorted(u) == list(range(10, 22)) for u in unlabeled)
    # the labelled stream runs on across passes: 48 draws are 4.8 reshuffled rounds of the 10 slices
    counts = np.bincount(labeled, minlength=10)
    assert counts.min() >= 4 and counts.max() <= 5
    assert len({tuple(labeled[i : i + 12]) for i in range(0, 48, 12)}) == 4


def test_evaluation_sampler(monkeypatch):
    """No process group: no sampler. Distributed: each rank its own share, no volume twice; padded only when there are
    fewer volumes than ranks (every rank must evaluate one to take part in the metric's gather)."""
    import torch.distributed as dist

    assert evaluation_sampler(list(range(6))) is None

    def shares(n: int, world: int) -> list[list[int]]:
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
        out = []
        for rank in range(world):
            monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
            out.append(list(evaluation_sampler(list(range(n)))))
        return out

    six = shares(6, 4)
    assert sorted(i for share in six for i in share) == list(range(6)) and all(six)
    two = shares(2, 4)
    assert all(len(share) == 1 for share in two) and {i for share in two for i in share} == {0, 1}
