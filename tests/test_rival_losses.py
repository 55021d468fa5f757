"""The rivals' losses against naive float64 loops written from the definitions, and the G^D batch sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ideal_components.data.partition_sampler import VolumePartitionBatchSampler
from ideal_components.rival_losses import (
    LocalRegionContrastiveLoss,
    PartitionContrastiveLoss,
    PositionalContrastiveLoss,
    local_regions,
    partition_index,
    relative_position,
)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(_unit(a.flatten()) @ _unit(b.flatten()))


# ---------------------------------------------------------------------------------------------------------------
# PCL


def pcl_reference(z1, z2, slices, counts, t, threshold):
    """PCL written out: 2B anchors, positives within the position threshold, denominators over all others."""
    feats = [z1[i] for i in range(len(z1))] + [z2[i] for i in range(len(z2))]
    pos = [(s / (n - 1) if n > 1 else 0.5) for s, n in zip(slices, counts)] * 2
    total = 0.0
    for a in range(len(feats)):
        denom = sum(math.exp(_cos(feats[a], feats[c]) / t) for c in range(len(feats)) if c != a)
        positives = [b for b in range(len(feats)) if b != a and abs(pos[a] - pos[b]) < threshold]
        total += -sum(math.log(math.exp(_cos(feats[a], feats[b]) / t) / denom) for b in positives) / len(positives)
    return total / len(feats)


@pytest.mark.parametrize("t, threshold", [(0.1, 0.1), (0.5, 0.3), (1.0, 0.01)])
def test_pcl_matches_the_loop(t, threshold):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    slices, counts = [0, 3, 9, 4, 0, 6], [10, 10, 10, 5, 1, 7]  # edges, another slice count, a one-slice volume
    loss = PositionalContrastiveLoss(temperature=t, threshold=threshold)(z1, z2, slices, counts)
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(pcl_reference(z1, z2, slices, counts, t, threshold), rel=1e-10)
    # symmetric in the views, and pooled maps give the same as their means
    assert float(loss) == pytest.approx(float(PositionalContrastiveLoss(t, threshold)(z2, z1, slices, counts)))
    maps1, maps2 = z1[:, :, None, None].expand(6, 5, 2, 2), z2[:, :, None, None].expand(6, 5, 2, 2)
    assert float(PositionalContrastiveLoss(t, threshold)(maps1, maps2, slices, counts)) == pytest.approx(float(loss))


def test_pcl_positives_from_the_datalist_positions():
    loss = PositionalContrastiveLoss(threshold=0.1)
    # positions 0, 0.05, 0.5, 1 (slice 19 of 20), 0.5 (a one-slice volume), 0.0 of a volume of 3
    slices, counts = [0, 1, 10, 19, 0, 0], [21, 21, 21, 20, 1, 3]
    assert relative_position(slices, counts).tolist() == [0.0, 0.05, 0.5, 1.0, 0.5, 0.0]
    mask = loss.positive_mask(slices, counts)
    b = 6
    for a in range(2 * b):
        got = {c for c in range(2 * b) if mask[a, c]}
        assert (a + b) % (2 * b) in got  # the other view always
    assert {c for c in range(2 * b) if mask[0, c]} == {6, 1, 7, 5, 11}  # 0.0 ~ 0.05 and the other 0.0, not 0.5
    assert {c for c in range(2 * b) if mask[2, c]} == {8, 4, 10}  # 0.5 with the one-slice volume's 0.5
    assert {c for c in range(2 * b) if mask[3, c]} == {9}  # the last slice: only its own view
    with pytest.raises(ValueError, match="slice < num_slices"):
        relative_position([5], [5])


def test_pcl_only_positive_similar_gives_a_small_loss():
    """The positive is the only similar feature: the loss is near its minimum; swapped positives make it large."""
    e = torch.eye(4, dtype=torch.float64)
    z1 = z2 = e  # four orthogonal slices, each identical to its own other view
    slices, counts = [0, 3, 6, 9], [10, 10, 10, 10]  # positions 0, 1/3, 2/3, 1: no other slice within 0.1
    small = PositionalContrastiveLoss(temperature=0.1, threshold=0.1)(z1, z2, slices, counts)
    expected = -math.log(math.exp(10) / (math.exp(10) + 6 * math.exp(0)))
    assert float(small) == pytest.approx(expected, rel=1e-10)
    large = PositionalContrastiveLoss(temperature=0.1, threshold=0.1)(z1, z2[[1, 0, 3, 2]], slices, counts)
    assert float(large) > 5.0


# ---------------------------------------------------------------------------------------------------------------
# Chaitanya et al., G^D


def gd_reference(z1, z2, slices, counts, volumes, t, n_parts):
    """G^D written out: one term per ordered positive pair, denominator the positive and the negatives."""
    feats = [z1[i] for i in range(len(z1))] + [z2[i] for i in range(len(z2))]
    b = len(z1)
    part = [(s * n_parts) // n for s, n in zip(slices, counts)] * 2
    vol = list(volumes) * 2
    terms = []
    for a in range(2 * b):
        negatives = [c for c in range(2 * b) if part[c] != part[a]]
        for p in range(2 * b):
            if p == a:
                continue
            if not ((p % b == a % b) or (part[p] == part[a] and vol[p] != vol[a])):
                continue
            num = math.exp(_cos(feats[a], feats[p]) / t)
            den = num + sum(math.exp(_cos(feats[a], feats[c]) / t) for c in negatives)
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def _gd_batch():
    # 3 volumes of 8, 12 and 5 slices; one slice of each partition (4) per volume, volume-major
    counts = [8] * 4 + [12] * 4 + [5] * 4
    slices = [0, 2, 5, 7] + [1, 3, 8, 11] + [0, 2, 3, 4]
    volumes = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    return slices, counts, volumes


@pytest.mark.parametrize("t", [0.1, 0.7])
def test_gd_matches_the_loop(t):
    slices, counts, volumes = _gd_batch()
    assert partition_index(slices, counts, 4).tolist() == [0, 1, 2, 3] * 3
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(12, 6, generator=g, dtype=torch.float64)
    loss = PartitionContrastiveLoss(temperature=t, n_parts=4)(z1, z2, slices, counts, volumes)
    assert float(loss) == pytest.approx(gd_reference(z1, z2, slices, counts, volumes, t, 4), rel=1e-10)
    swapped = PartitionContrastiveLoss(temperature=t, n_parts=4)(z2, z1, slices, counts, volumes)
    assert float(swapped) == pytest.approx(float(loss), rel=1e-10)


def test_gd_positives_and_negatives_are_the_definitions():
    slices, counts, volumes = _gd_batch()
    positives, negatives = PartitionContrastiveLoss(n_parts=4).masks(slices, counts, volumes)
    b = 12
    # slice 0 (volume a, partition 0): its view 12; partition 0 of b and c (4, 8) in both views
    assert {c for c in range(2 * b) if positives[0, c]} == {12, 4, 16, 8, 20}
    assert {c for c in range(2 * b) if negatives[0, c]} == {c for c in range(2 * b) if c % 4 != 0}
    # a same-partition slice of the same volume (not drawn by the sampler) is neither
    slices2, counts2, volumes2 = [0, 1, 4], [8, 8, 8], ["a", "a", "a"]  # partitions 0, 0, 2
    pos2, neg2 = PartitionContrastiveLoss(n_parts=4).masks(slices2, counts2, volumes2)
    assert not pos2[0, 1] and not neg2[0, 1] and pos2[0, 3] and neg2[0, 2]


def test_gd_single_volume_falls_back_to_own_views():
    """A batch of one volume: the only positives are the own views (documented fallback); one partition: error."""
    slices, counts, volumes = [0, 3, 5, 7], [8] * 4, ["a"] * 4
    positives, _ = PartitionContrastiveLoss(n_parts=4).masks(slices, counts, volumes)
    assert positives.sum(1).tolist() == [1] * 8
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    loss = PartitionContrastiveLoss(temperature=0.1)(z1, z2, slices, counts, volumes)
    assert float(loss) == pytest.approx(gd_reference(z1, z2, slices, counts, volumes, 0.1, 4), rel=1e-10)
    with pytest.raises(ValueError, match="no negative"):
        PartitionContrastiveLoss()(z1, z2, [0, 0, 1, 1], [8] * 4, ["a", "b", "c", "d"])


def test_gd_only_positive_similar():
    # each partition's slices identical across volumes and views, partitions orthogonal
    e = torch.eye(3, dtype=torch.float64)
    z = torch.stack([e[0], e[1], e[0], e[2]])  # one direction per partition
    slices, counts, volumes = [0, 4, 1, 6], [8] * 4, ["a", "a", "b", "b"]  # partitions 0, 2, 0, 3
    loss = PartitionContrastiveLoss(temperature=0.1, n_parts=4)(z, z, slices, counts, volumes)
    # every positive has cosine 1, every negative 0: partition-0 anchors (4) have 3 positives and 4 negatives each,
    # the others (4) 1 positive (their view) and 6 negatives
    terms = [-math.log(math.exp(10) / (math.exp(10) + 4))] * 12 + [-math.log(math.exp(10) / (math.exp(10) + 6))] * 4
    assert float(loss) == pytest.approx(sum(terms) / 16, rel=1e-10)
    assert float(PartitionContrastiveLoss(n_parts=4).retrieval_accuracy(z, z, slices, counts, volumes)) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Chaitanya et al., local regions


def local_reference(z1, z2, t, size=3):
    """The local loss written out region by region (their loop), averaged over images."""
    b, _, h, w = z1.shape
    pos, neg = local_regions(h, w, size)

    def region(z, i, yx):
        y, x = int(yx[0]), int(yx[1])
        return z[i, :, y : y + size, x : x + size]

    total = 0.0
    for i in range(b):
        per_image = 0.0
        for r in range(len(pos)):
            f1, f2 = region(z1, i, pos[r]), region(z2, i, pos[r])
            num = math.exp(_cos(f1, f2) / t)
            den1 = sum(
                math.exp(_cos(f1, region(z1, i, n)) / t) + math.exp(_cos(f1, region(z2, i, n)) / t) for n in neg[r]
            )
            den2 = sum(
                math.exp(_cos(f2, region(z2, i, n)) / t) + math.exp(_cos(f2, region(z1, i, n)) / t) for n in neg[r]
            )
            per_image += -math.log(num / (num + den1)) - math.log(num / (num + den2))
        total += per_image / len(pos)
    return total / b


@pytest.mark.parametrize("t, size", [(0.1, 16), (0.5, 11)])
def test_local_matches_the_loop(t, size):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(2, 4, size, size + 2, generator=g, dtype=torch.float64)
    z2 = torch.randn(2, 4, size, size + 2, generator=g, dtype=torch.float64)
    loss = LocalRegionContrastiveLoss(temperature=t)(z1, z2)
    assert float(loss) == pytest.approx(local_reference(z1, z2, t), rel=1e-10)
    assert float(LocalRegionContrastiveLoss(temperature=t)(z2, z1)) == pytest.approx(float(loss), rel=1e-10)


def test_local_regions_layout():
    pos, neg = local_regions(48, 48)  # their 192x192 input after 3 decoder blocks: m = 44
    grid = [0, 11, 22, 33, 44]
    assert pos.tolist()[:3] == [[0, 0], [0, 22], [0, 44]] and pos.tolist()[9] == [11, 11]
    assert neg.shape == (13, 5, 2) and set(neg.flatten().tolist()) <= set(grid)
    assert neg[0].tolist() == [[0, 22], [11, 11], [11, 22], [22, 0], [22, 11]]
    with pytest.raises(ValueError, match="at least 8x8"):
        local_regions(7, 16)


def test_local_only_positive_similar():
    """Each region's 3x3 block is a distinct one-hot pattern, identical in both views: the positive is the only
    similar feature, and the loss equals -log(e^{1/t} / (e^{1/t} + 10)) (10 negatives at cosine 0)."""
    size = 16  # grid 0, 3, 6, 9, 12: distinct corners are at least 3 cells apart, so their 3x3 regions are disjoint
    z = torch.zeros(1, size * size, size, size, dtype=torch.float64)
    for y in range(size):
        for x in range(size):
            z[0, y * size + x, y, x] = 1.0
    loss = LocalRegionContrastiveLoss(temperature=0.1)(z, z.clone())
    assert float(loss) == pytest.approx(-2 * math.log(math.exp(10) / (math.exp(10) + 10)), rel=1e-10)
    assert float(LocalRegionContrastiveLoss(temperature=0.1).retrieval_accuracy(z, z)) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# the G^D batch sampler


def _items(counts: dict[str, int]) -> list[dict]:
    return [{"id": v, "slice": k, "num_slices": n} for v, n in counts.items() for k in range(n)]


def test_sampler_batches_hold_every_partition_of_distinct_volumes():
    counts = {"a": 8, "b": 12, "c": 5, "d": 9, "e": 3, "f": 10}  # "e" has fewer slices than partitions
    items = _items(counts)
    sampler = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=3)
    assert "e" not in sampler.volume_ids and len(sampler) == 2  # 5 eligible volumes -> 2 batches of 2
    seen, first_pass = [], list(sampler)
    for batch in first_pass:
        assert len(batch) == 8
        vols = [items[i]["id"] for i in batch]
        parts = [(items[i]["slice"] * 4) // items[i]["num_slices"] for i in batch]
        assert len(set(vols)) == 2 and parts == [0, 1, 2, 3] * 2
        assert vols[:4] == [vols[0]] * 4  # volume-major
        seen += vols[::4]
    assert len(set(seen)) == 4  # no volume twice in an epoch
    # deterministic from (seed, epoch); another epoch, another order
    again = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=3)
    assert list(again) == first_pass
    again.set_epoch(1)
    assert list(again) != first_pass


def test_sampler_passes_within_an_epoch_continue():
    """An epoch longer than one pass (``epoch_length`` above ``len(sampler)``): each further pass is a fresh shuffle
    and fresh slice draws, a fresh sampler at the same epoch (a resume) repeats the passes, a new epoch restarts."""
    items = _items({f"v{i}": 8 + i for i in range(8)})
    sampler = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=5)
    passes = [list(sampler) for _ in range(4)]
    assert len({tuple(map(tuple, p)) for p in passes}) == 4  # never a replay of the first pass
    counts = np.bincount([i for p in passes for b in p for i in b], minlength=len(items))
    assert len(np.flatnonzero(counts)) > len(items) // 2  # the draws move around the partitions
    for p in passes:
        for batch in p:  # each pass still holds every partition of distinct volumes
            assert [(items[i]["slice"] * 4) // items[i]["num_slices"] for i in batch] == [0, 1, 2, 3] * 2
    resumed = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=5)
    assert [list(resumed) for _ in range(4)] == passes
    # through a DataLoader with a worker process (the batch sampler stays in the main process), as ignite re-iterates
    loader_sampler = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=5)
    loader = torch.utils.data.DataLoader(list(range(len(items))), batch_sampler=loader_sampler, num_workers=1)
    assert [[b.tolist() for b in loader] for _ in range(4)] == passes
    sampler.set_epoch(1)
    resumed.set_epoch(1)
    assert list(sampler) == list(resumed) != passes[0]


def test_sampler_shards_ranks_and_refuses_single_volume_batches():
    items = _items({f"v{i}": 8 for i in range(8)})
    full = list(VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2, seed=0, num_replicas=1, rank=0))
    ranks = [list(VolumePartitionBatchSampler(items, 4, 2, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(r) for r in ranks] == [2, 2]
    assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, full))  # the same groups, dealt out
    with pytest.raises(ValueError, match="volumes_per_batch must be >= 2"):
        VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=1)
    with pytest.raises(ValueError, match="too few"):
        VolumePartitionBatchSampler(_items({"a": 8, "b": 3}), n_parts=4, volumes_per_batch=2)
