"""The rivals' pre-training configs (PCL, Chaitanya et al.'s two stages) in both bundles: MONAI's property check,
the settings reaching their components, real ``monai.bundle run`` subprocesses on the phantoms (encoders and decoder
loading into ``train.json``) and a resume after SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_runs import TINY, config_dir, kill_config, run_bundle_ok, run_bundle_process, tiny_acdc
from monai.bundle import ConfigParser, ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["ideal_acdc", "ideal_mmwhs"]
RIVALS = [
    ("pretrain.json", "pretrain_pcl.json"),
    ("pretrain.json", "pretrain_chaitanya.json"),
    ("pretrain.json", "pretrain_chaitanya_decoder.json"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    from ideal_components.data.acdc import prepare_acdc
    from ideal_components.data.mmwhs import prepare_mmwhs
    from ideal_components.synthetic import synth_acdc, synth_mmwhs

    base = tmp_path_factory.mktemp("rival_prepared")
    synth_acdc(str(base / "raw_acdc"), patients=6, seed=3, progress=False)
    synth_mmwhs(str(base / "raw_mmwhs"), volumes=8, seed=3, progress=False)
    prepare_acdc(str(base / "raw_acdc"), str(base / "acdc"), pixdim=4.0, spatial_size=64)
    prepare_mmwhs(str(base / "raw_mmwhs"), str(base / "mmwhs"), pixdim=6.0, spatial_size=32)
    return {"ideal_acdc": base / "acdc", "ideal_mmwhs": base / "mmwhs"}


def _configs(bundle: str, names) -> list[str]:
    return [str(config_dir(bundle) / n) for n in names]


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("names", RIVALS, ids=lambda n: n[1])
def test_check_properties(bundle, names, tmp_path, prepared):
    root = config_dir(bundle)
    wf = ConfigWorkflow(
        config_file=_configs(bundle, names),
        meta_file=str(root / "metadata.json"),
        logging_file=str(root / "logging.conf"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        backbone="resnet10",
        dataset_dir=str(prepared[bundle]),
        use_pretrained=False,
        num_workers=0,
        batch_size=8,  # Chaitanya: 2 volumes x 4 partitions
    )
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_rival_settings_reach_their_components(bundle, prepared, tmp_path):
    from ideal_components.data.partition_sampler import VolumePartitionBatchSampler
    from ideal_components.rival_engines import TwoViewContrastiveTrainer

    def parser(names, **over):
        p = ConfigParser()
        p.read_config(_configs(bundle, names))
        p.update({"backbone": "resnet10", "dataset_dir": str(prepared[bundle]), "num_workers": 0, **over})
        p["bundle_root"] = str(tmp_path)  # the summary writer's folder
        return p

    pcl = parser(RIVALS[0], position_threshold=0.2, temperature=0.3)
    loss = pcl.get_parsed_content("loss")
    assert (type(loss).__name__, loss.threshold, loss.temperature) == ("PositionalContrastiveLoss", 0.2, 0.3)
    head = [type(m).__name__ for m in pcl.get_parsed_content("network_def").head.layers]
    assert (
        head == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"] and pcl.get_parsed_content("network_def").encoder_k is None
    )
    affine = pcl.get_parsed_content("train#preprocessing").transforms[5]
    assert [t.keys for t in affine.transforms] == [("image",), ("image_view2",)]  # one draw per view
    assert isinstance(pcl.get_parsed_content("train#trainer"), TwoViewContrastiveTrainer)

    cha = parser(RIVALS[1], batch_size=8)
    sampler = cha.get_parsed_content("train#sampler")
    assert isinstance(sampler, VolumePartitionBatchSampler) and (sampler.volumes_per_batch, sampler.n_parts) == (2, 4)
    assert cha.get_parsed_content("loss").n_parts == 4

    dec = parser(RIVALS[2], use_pretrained=False)
    net = dec.get_parsed_content("network_def")
    assert net.decoder_blocks == 3 and not any(p.requires_grad for p in net.encoder.parameters())
    params = dec.get_parsed_content("optimizer").param_groups[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in net.parameters() if p.requires_grad}
    assert [type(m).__name__ for m in net.head.layers] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert dec.get_parsed_content("geometric_prob") == 0.0  # intensity-only views
    assert dec["train#checkpointer#file_prefix"] == dec["train#resumer#file_prefix"] == "pretrain_decoder"


def test_fine_tuning_loads_the_decoder_blocks_into_decoder_a(tmp_path):
    from monai.networks.nets import FlexibleUNet

    from ideal_components.networks import TwoBranchFlexibleUNet
    from ideal_components.rival_networks import DecoderContrastiveNet, load_pretrained_decoder, save_decoder

    pre = DecoderContrastiveNet(backbone="resnet10", decoder_blocks=3)
    path = save_decoder(pre, str(tmp_path / "decoder.pt"))
    net = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
    b_before = {k: v.clone() for k, v in net.decoder_b.state_dict().items()}
    block3 = {k: v.clone() for k, v in net.branch_a.decoder.blocks[3].state_dict().items()}
    assert load_pretrained_decoder(net, path) == [0, 1, 2]
    for i in range(3):
        for k, v in pre.decoder.blocks[i].state_dict().items():
            assert torch.equal(net.branch_a.decoder.blocks[i].state_dict()[k], v)
    assert all(torch.equal(v, block3[k]) for k, v in net.branch_a.decoder.blocks[3].state_dict().items())
    assert all(torch.equal(v, b_before[k]) for k, v in net.decoder_b.state_dict().items())  # decoder B untouched
    assert load_pretrained_decoder(FlexibleUNet(1, 4, backbone="resnet10", upsample="deconv"), path) == [0, 1, 2]
    wrong = DecoderContrastiveNet(backbone="resnet50", decoder_blocks=2)  # other channels
    with pytest.raises(RuntimeError, match="block 0"):
        load_pretrained_decoder(net, save_decoder(wrong, str(tmp_path / "wrong.pt")))
    with pytest.raises(FileNotFoundError):
        load_pretrained_decoder(net, str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_rivals_run_and_their_weights_load_into_train(tmp_path):
    """PCL and both Chaitanya stages run from the ACDC bundle on phantoms; their encoders and the decoder blocks load
    into a 1-epoch fine-tuning run."""
    prepared = tiny_acdc(tmp_path / "data")[1]
    data = ["--dataset_dir", str(prepared), "--max_epochs", "1"]
    pcl, cha = tmp_path / "pcl", tmp_path / "chaitanya"
    out = run_bundle_ok("ideal_acdc", list(RIVALS[0]), pcl, *TINY, *data)
    assert "saved the encoder" in out
    run_bundle_ok("ideal_acdc", list(RIVALS[1]), cha, *TINY, *data, "--batch_size", "8")
    encoder = torch.load(cha / "models" / "pretrained_encoder.pt", weights_only=True)
    out = run_bundle_ok("ideal_acdc", list(RIVALS[2]), cha, *TINY, *data)
    assert "loaded pretrained encoder weights" in out and "saved 3 decoder block(s)" in out
    assert (cha / "models" / "pretrain_decoder_checkpoint_epoch=1.pt").is_file()
    # the frozen encoder is the stage-1 encoder, unchanged (BatchNorm statistics included)
    stage2 = torch.load(cha / "models" / "pretrain_decoder_checkpoint_epoch=1.pt", weights_only=True)["network"]
    assert all(torch.equal(stage2[f"encoder.{k}"], v) for k, v in encoder.items())
    train = ["--val_interval", "1", "--label_fraction", "10"]
    out = run_bundle_ok("ideal_acdc", ["train.json"], pcl, *TINY, *data, *train)
    assert "loaded pretrained encoder weights" in out
    decoder = str(cha / "models" / "pretrained_decoder.pt")
    out = run_bundle_ok("ideal_acdc", ["train.json"], cha, *TINY, *data, *train, "--pretrained_decoder", decoder)
    assert "loaded pretrained decoder block(s) [0, 1, 2]" in out


@pytest.mark.slow
# Chaitanya's stage 1 only (suite time): it runs the new trainer with the new volume x partition sampler; PCL runs the
# same trainer with the sampler whose resume test_resume.py covers
@pytest.mark.parametrize("names", RIVALS[1:2], ids=lambda n: n[1])
def test_rival_pretraining_resumes_to_identical_weights(names, tmp_path):
    prepared = tiny_acdc(tmp_path / "data")[1]
    args = [*TINY, "--dataset_dir", str(prepared), "--max_epochs", "3", "--batch_size", "8"]
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    run_bundle_ok("ideal_acdc", list(names), ref, *args)
    a = torch.load(ref / "models" / "pretrain_checkpoint_epoch=3.pt", weights_only=True)
    killer = kill_config(tmp_path / "kill.json", "ideal_acdc", *names)
    kill_at = str(a["trainer"]["epoch_length"] + 1)  # in epoch 2
    proc = run_bundle_process("ideal_acdc", [*names, killer], cut, *args, "--kill_at_iteration", kill_at)
    assert proc.returncode == -9, f"the run was not killed (exit {proc.returncode})\n{proc.stderr[-3000:]}"
    out = run_bundle_ok("ideal_acdc", list(names), cut, *args, "--resume", "True")
    assert "pretrain_checkpoint_epoch=1.pt (epoch 1)" in out
    b = torch.load(cut / "models" / "pretrain_checkpoint_epoch=3.pt", weights_only=True)
    assert a["network"].keys() == b["network"].keys()
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"]), "weights differ"
    assert a["trainer"] == b["trainer"]
