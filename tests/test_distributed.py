"""Distributed training: ``torchrun --nproc_per_node=2`` with ``multi_gpu_train.json`` on CPU (gloo).

Pre-training and fine-tuning run in 2 processes; each rank's sampler yields a disjoint shard of the slices; only
rank 0 writes checkpoints, the encoder and TensorBoard logs; the fine-tuned ``model.pt`` loads into the inference
config, which then segments a raw volume.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bundle_runs import TINY, bundle_command, check_segmentation, config_dir, run_bundle_ok, tiny_acdc

pytestmark = pytest.mark.slow


def _shard_recorder(path, config):
    """A config merged last that records, on every rank, the slice indices its sampler yields in epochs 1 and 2."""
    base = json.loads((config_dir("ideal_acdc") / config).read_text())
    extra = {
        "imports": base["imports"] + ["$import json"],
        "shard_record": "$open(os.path.join(@bundle_root, 'shard_%s_rank%d.json' % (@train#checkpointer#file_prefix, "
        "dist.get_rank())), 'w').write(json.dumps([[i for b in (@train#sampler.set_epoch(e) or list(@train#sampler)) "
        "for i in b] for e in (1, 2)]))",
        "run": ["$@shard_record"] + base["run"],
    }
    path.write_text(json.dumps(extra))
    return path


def _torchrun(root, names, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += bundle_command("ideal_acdc", names, root, *args)  # torchrun's own "-m": run monai.bundle as a module
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(root.parent), timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    return proc.stdout + proc.stderr


def _check_shards(root, prefix):
    shards = [json.loads((root / f"shard_{prefix}_rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in (0, 1):
        a, b = set(shards[0][epoch]), set(shards[1][epoch])
        assert a and b and not (a & b), f"{prefix}: ranks share slices in epoch {epoch + 1}"
    assert shards[0][0] != shards[0][1], "the shard order does not change between epochs"


def test_torchrun_two_processes_gloo(tmp_path):
    raw, prepared = tiny_acdc(tmp_path / "data")
    root = tmp_path / "run"
    root.mkdir()
    common = [*TINY, "--dataset_dir", str(prepared)]

    pre = _shard_recorder(tmp_path / "shard_pretrain.json", "pretrain.json")
    _torchrun(root, ["pretrain.json", "multi_gpu_train.json", pre], *common, "--max_epochs", "2")
    _check_shards(root, "pretrain")
    assert (root / "models" / "pretrained_encoder.pt").is_file()
    assert len(list((root / "logs" / "pretrain").glob("events.out.tfevents.*"))) == 1  # rank 0 only

    train = _shard_recorder(tmp_path / "shard_train.json", "train.json")
    # decoder blocks as Chaitanya et al.'s stage 2 writes them: loaded on every rank too (load_pretrained)
    from ideal_components.rival_networks import DecoderContrastiveNet, save_decoder

    decoder = save_decoder(DecoderContrastiveNet(backbone="resnet10", decoder_blocks=3), str(tmp_path / "decoder.pt"))
    args = ["--max_epochs", "2", "--val_interval", "1", "--pretrained_decoder", decoder]
    out = _torchrun(root, ["train.json", "multi_gpu_train.json", train], *common, *args)
    _check_shards(root, "train")
    assert out.count("loaded pretrained encoder weights") == 2  # every rank starts from the encoder
    assert out.count("loaded pretrained decoder block(s) [0, 1, 2]") == 2
    assert len(list((root / "logs" / "train").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (root / "models").iterdir()) == [
        "model.pt",
        "pretrain_checkpoint_epoch=2.pt",
        "pretrained_encoder.pt",
        "train_checkpoint_epoch=2.pt",
    ]

    # the DDP-trained model is a plain FlexibleUNet state dict: the inference config loads it strictly and runs
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = raw / "training" / "patient002" / "patient002_frame01.nii.gz"
    (inputs / src.name).write_bytes(src.read_bytes())
    run_bundle_ok("ideal_acdc", ["inference.json"], root, *TINY, "--dataset_dir", str(inputs), "--pixdim", "[4,4,-1]")
    check_segmentation(root / "predictions" / "patient002_frame01_seg.nii.gz", src, 4)
