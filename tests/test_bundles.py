"""The two MONAI bundles: the model zoo's static checks, and real ``python -m monai.bundle run`` subprocesses."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_runs import TINY, check_segmentation, python_ok, run_bundle_ok
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
BUNDLES = ["ideal_acdc", "ideal_mmwhs"]
# the ids whose values may differ between the two bundles (data and hyper-parameters, never code)
DATASET_SPECIFIC = {"label_fraction", "num_classes", "class_names", "spatial_size", "pixdim", "transforms"}


def configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in names]


def workflow(bundle: str, names: tuple[str, ...], workflow_type: str, root: Path, **override) -> ConfigWorkflow:
    configs_dir = REPO / "bundles" / bundle / "configs"
    return ConfigWorkflow(
        config_file=configs(bundle, *names),
        meta_file=str(configs_dir / "metadata.json"),
        logging_file=str(configs_dir / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **override,
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Tiny prepared phantom sets of both datasets (the bundles' datalists must resolve to real files)."""
    from ideal_components.data.acdc import prepare_acdc
    from ideal_components.data.mmwhs import prepare_mmwhs
    from ideal_components.synthetic import synth_acdc, synth_mmwhs

    base = tmp_path_factory.mktemp("prepared")
    synth_acdc(str(base / "raw_acdc"), patients=5, seed=3, progress=False)
    synth_mmwhs(str(base / "raw_mmwhs"), volumes=3, seed=3, progress=False)
    prepare_acdc(str(base / "raw_acdc"), str(base / "acdc"), pixdim=4.0, spatial_size=64)
    prepare_mmwhs(str(base / "raw_mmwhs"), str(base / "mmwhs"), pixdim=6.0, spatial_size=32)
    return {"ideal_acdc": base / "acdc", "ideal_mmwhs": base / "mmwhs"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_files(bundle):
    root = REPO / "bundles" / bundle
    for rel in ["LICENSE", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt"]:
        assert (root / rel).is_file(), f"{bundle}: {rel} is missing"
    for name in [
        "pretrain",
        "pretrain_global",
        "train",
        "train_supervised",
        "evaluate",
        "inference",
        "multi_gpu_train",
    ]:
        json.loads((root / "configs" / f"{name}.json").read_text())
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    license_text = (root / "LICENSE").read_text()
    for words in ["Apache License", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS"]:
        assert words in license_text  # the full licence text, as the zoo's bundles carry it
    from ideal_components.package import large_files_yml

    assert (root / "large_files.yml").read_text() == large_files_yml()  # the repository copy: no URL, no md5 yet


@pytest.mark.parametrize("bundle", BUNDLES)
def test_learning_rate_schedule(bundle, prepared):
    """Default: the paper's constant learning rate. ``warmup_epochs`` / ``cosine_decay``: a linear warm-up from 0,
    then a half-cosine to 0 at ``max_epochs``, per iteration."""
    from monai.bundle import ConfigParser

    def learning_rates(**overrides) -> tuple[list[float], int]:
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser.update({"dataset_dir": str(prepared[bundle]), "num_workers": 0, "max_epochs": 4, **overrides})
        scheduler = parser.get_parsed_content("lr_scheduler")
        steps = len(parser.get_parsed_content("train#dataloader"))
        rates = []
        for _ in range(4 * steps):
            rates.append(scheduler.optimizer.param_groups[0]["lr"])
            scheduler.optimizer.step()
            scheduler.step()
        return rates + [scheduler.optimizer.param_groups[0]["lr"]], steps

    rates, _ = learning_rates()
    assert rates == [1e-5] * len(rates)
    rates, steps = learning_rates(warmup_epochs=1, cosine_decay=True, learning_rate=1e-3)
    assert rates[0] == 0.0 and rates[steps] == pytest.approx(1e-3)
    assert rates[:steps] == pytest.approx([1e-3 * i / steps for i in range(steps)])
    assert all(a > b for a, b in zip(rates[steps:], rates[steps + 1 :]))  # decreasing after the warm-up
    assert rates[-1] == 0.0  # after the last iteration


MAX_CONFIG_LINE = 160


@pytest.mark.parametrize("bundle", BUNDLES)
def test_config_lines_fit(bundle):
    """Every line of a config is at most 160 characters, so that every expression reads on one line: logic longer
    than that belongs in a small named function of the package. ``metadata.json`` is exempt: its long lines are the
    zoo's free-text fields (description, changelog), one JSON string each."""
    long = [
        f"{path.name}:{number}: {len(line)} characters"
        for path in sorted((REPO / "bundles" / bundle / "configs").glob("*.json"))
        if path.name != "metadata.json"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if len(line) > MAX_CONFIG_LINE
    ]
    assert not long, f"{bundle}: config lines over {MAX_CONFIG_LINE} characters: {long}"


# top-level ids that are wiring, not settings
INTERNAL_IDS = {"imports", "datalist", "network", "inference_network", "is_main_process", "summary_writer"}
INTERNAL_IDS |= {"ddp_find_unused_parameters", "initialize", "run", "finalize", "_desc_"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_readme_shows_every_setting(bundle):
    """Every setting of the configs (a top-level id holding a value, not a component) is in the table of the bundle
    README that says how to override it."""
    readme = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    missing = []
    for path in sorted((REPO / "bundles" / bundle / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        for key, value in json.loads(path.read_text()).items():
            component = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))
            if "#" not in key and key not in INTERNAL_IDS and not component and f"`{key}`" not in table:
                missing.append(f"{path.name}: {key}")
    assert not missing, f"{bundle}/docs/README.md: settings missing from the table of overrides: {missing}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_label_fraction_is_a_number(bundle, prepared):
    """``label_fraction`` is a number (the string of the datalist key still works): 10, 10.0 and "10" are one key."""
    from monai.bundle import ConfigParser

    def lists(fraction) -> tuple[list, list]:
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser.update({"dataset_dir": str(prepared[bundle]), "label_fraction": fraction})
        return parser.get_parsed_content("train#labeled"), parser.get_parsed_content("train#unlabeled")

    default = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())["label_fraction"]
    assert isinstance(default, (int, float))
    datalist = json.loads((prepared[bundle] / "datalist.json").read_text())
    for fraction in (100, 100.0, "100"):
        labeled, unlabeled = lists(fraction)
        assert [d["id"] for d in labeled] == [d["id"] for d in datalist["labeled_100"]] and unlabeled == []
    small = min(datalist["fractions"], key=float)
    labeled, _ = lists(float(small))
    assert [d["id"] for d in labeled] == [d["id"] for d in datalist[f"labeled_{small}"]]
    with pytest.raises(RuntimeError) as error:
        lists("ten")
    assert "'ten' is not a number" in str(error.value.__cause__)  # MONAI's message names the expression, this the value


@pytest.mark.parametrize("bundle", BUNDLES)
def test_supervised_config_is_built_for_supervised_training(bundle, prepared):
    """``train_supervised.json``: labelled slices only, no placeholder labels, batches of labelled slices."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs(bundle, "train.json", "train_supervised.json"))
    parser.update({"dataset_dir": str(prepared[bundle]), "num_workers": 0, "batch_size": 4, "label_fraction": 100})
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "ExtractSliced" in names and "EnsureLabeld" not in names
    datalist = parser.get_parsed_content("train#datalist")
    assert datalist and all(item["labeled"] == 1 and "label" in item for item in datalist)
    sampler = parser.get_parsed_content("train#sampler")
    assert sampler.labeled_only and sampler.labeled_batch_size == sampler.batch_size == 4
    assert type(parser.get_parsed_content("loss")).__name__ == "SegmentationLoss"


def _sweep_arm_parser(command: list[str], fraction_extra: dict | None = None):
    """The ConfigParser of a sweep step's ``monai.bundle run`` command: its config files and its overrides."""
    import ast

    from monai.bundle import ConfigParser

    args = command[command.index("run") + 1 :]
    values = dict(zip(args[::2], args[1::2]))
    parser = ConfigParser()
    parser.read_config(ast.literal_eval(values.pop("--config_file")))
    for key in ("--meta_file", "--logging_file"):
        values.pop(key)
    for key, value in values.items():
        try:
            parser[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser[key[2:]] = value
    parser.update(fraction_extra or {})
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_sweep_arms_are_on_equal_footing(bundle, prepared, tmp_path):
    """Every arm of a sweep, read from the configs with the sweep's own commands: at each label fraction the same
    optimiser steps (epoch_length x max_epochs), the same loss on the labelled slices, and a ramp-up of the
    pseudo-label weight that completes within the run; every pre-training (stage) the same optimiser steps
    (issue: comparisons on equal footing)."""
    from ideal_components.experiments.methods import METHODS
    from ideal_components.experiments.plan import plan_sweep
    from ideal_components.losses import CrossPseudoLabelLoss, SegmentationLoss

    datalist = json.loads((prepared[bundle] / "datalist.json").read_text())
    fractions = [f for f in datalist["fractions"] if str(f) != "100"][:2] + ["100"]
    plan = plan_sweep(
        str(REPO / "bundles" / bundle), ",".join(map(str, fractions)), ",".join(METHODS), "0",
        str(prepared[bundle]), str(tmp_path / "sweep"), {"max_epochs": 6, "val_interval": 2, "dice_weight": 1.0},
        {"max_epochs": 3, "batch_size": 4},
    )  # fmt: skip
    pretrain_steps = {}
    for step in (s for s in plan.steps if s.kind.startswith("pretrain")):
        parser = _sweep_arm_parser(step.command, {"num_workers": 0})
        pretrain_steps[step.key] = parser.get_parsed_content("epoch_length") * parser.get_parsed_content("max_epochs")
    assert {k.split("/")[0] for k in pretrain_steps} == {"global_cl", "ideal", "pcl", "chaitanya"}
    assert "chaitanya/seed0/pretrain_decoder" in pretrain_steps
    assert len(set(pretrain_steps.values())) == 1, f"pre-training steps differ: {pretrain_steps}"
    g = torch.Generator().manual_seed(0)
    logits, label = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4, 1, 8, 8), generator=g)
    by_fraction: dict[str, dict[str, tuple]] = {}
    for step in (s for s in plan.steps if s.kind == "train"):
        parser = _sweep_arm_parser(step.command, {"num_workers": 0})
        steps = parser.get_parsed_content("epoch_length") * parser.get_parsed_content("max_epochs")
        loss = parser.get_parsed_content("loss")
        if isinstance(loss, CrossPseudoLabelLoss):
            labelled = loss.compute(logits, logits, label, torch.ones(4))
            per_branch = (labelled["supervised"] + loss.dice_weight * labelled["dice"]) / 2
            rampup, max_epochs = parser.get_parsed_content("rampup_epochs"), parser.get_parsed_content("max_epochs")
            assert 0 <= rampup < max_epochs, f"{step.key}: the ramp-up ({rampup}) does not complete"
            assert loss.unlabeled_weight_at(max_epochs - 1) == loss.unlabeled_weight
        else:
            assert isinstance(loss, SegmentationLoss), f"{step.key}: {type(loss).__name__}"
            per_branch = loss(logits, label)
        by_fraction.setdefault(step.fraction, {})[step.method] = (steps, float(per_branch))
    assert set(by_fraction) == {str(f) for f in fractions}
    for fraction, arms in by_fraction.items():
        assert set(arms) == set(METHODS)
        steps = {arm: v[0] for arm, v in arms.items()}
        assert len(set(steps.values())) == 1, f"fraction {fraction}: optimiser steps differ {steps}"
        losses = [v[1] for v in arms.values()]
        assert max(losses) - min(losses) < 1e-5, f"fraction {fraction}: supervised losses differ {arms}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_global_cl_head_is_a_nonlinear_mlp_and_the_local_head_one_convolution(bundle):
    """Global CL as its authors run it (an MLP with a ReLU on pooled features); the local head stays the paper's
    single 1x1 convolution."""
    from monai.bundle import ConfigParser

    for names, layers in ((("pretrain.json",), ["Conv2d"]), (("pretrain.json", "pretrain_global.json"), None)):
        parser = ConfigParser()
        parser.read_config(configs(bundle, *names))
        parser.update({"backbone": "resnet10", "device": "$torch.device('cpu')"})
        net = parser.get_parsed_content("network_def")
        kinds = [type(m).__name__ for m in net.modules() if not list(m.children())]
        heads = [m for name, m in net.named_modules() if type(m).__name__ == "DenseProjectionHead"]
        assert heads, kinds
        head_kinds = [type(m).__name__ for m in heads[0].layers]
        if layers is not None:
            assert head_kinds == layers
        else:
            assert head_kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"] and net.pool_before_head


@pytest.mark.parametrize("bundle", BUNDLES)
def test_pretrain_loss_settings_reach_the_loss(bundle):
    """``batch_negatives`` (off: the paper's negatives, other locations of the same image) and the loss's other ids."""
    from monai.bundle import ConfigParser

    for batch_negatives in (None, True):
        parser = ConfigParser()
        parser.read_config(configs(bundle, "pretrain.json"))
        if batch_negatives is not None:
            parser["batch_negatives"] = batch_negatives
        parser.update({"temperature": 0.2, "max_locations": 64})
        loss = parser.get_parsed_content("loss")
        assert loss.batch_negatives is bool(batch_negatives)
        assert (loss.temperature, loss.max_locations) == (0.2, 64)


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("name", ["pretrain.json", "train.json", "inference.json"])
def test_amp_default_follows_the_gpu(bundle, name, monkeypatch):
    """``amp`` is ``ideal_components.engines.default_amp(@device)``: on for CUDA GPUs before Ampere (compute capability
    < 8) and on ROCm, off from Ampere on (benchmarks/results/gpu_options.md) and on the CPU, also when ``device`` is
    overridden with a string on the command line."""
    from monai.bundle import ConfigParser

    def amp(capability, hip=None, device=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.version, "hip", hip)
        parser = ConfigParser()
        parser.read_config(configs(bundle, name)[0])
        if device is not None:
            parser["device"] = device
        return parser.get_parsed_content("amp")

    assert [amp(c) for c in (None, (7, 0), (7, 5), (8, 0), (9, 0))] == [False, True, True, False, False]
    assert amp((9, 0), hip="6.2") is True
    assert amp((9, 0), device="cpu") is False and amp((7, 0), device="cuda:0") is True


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_offline(bundle):
    meta = REPO / "bundles" / bundle / "configs" / "metadata.json"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(SCHEMA)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    "names, workflow_type",
    [
        (("pretrain.json",), "train"),
        (("pretrain.json", "pretrain_global.json"), "train"),
        (("train.json",), "train"),
        (("train.json", "train_supervised.json"), "train"),
        (("train.json", "evaluate.json"), "train"),
        (("inference.json",), "infer"),
    ],
)
def test_check_properties(bundle, names, workflow_type, tmp_path, prepared):
    data = prepared[bundle] if workflow_type == "train" else prepared[bundle] / "imagesTr"
    override = {"use_pretrained": False} if workflow_type == "train" else {}
    wf = workflow(bundle, names, workflow_type, tmp_path, backbone="resnet10", dataset_dir=str(data), **override)
    wf.initialize()
    assert wf.check_properties() == []


def _structure(obj, path=""):
    """Ids and `_target_`s of a config, with the dataset-specific values left out."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = (
                "<dataset specific>" if k in DATASET_SPECIFIC and path.count("#") < 1 else _structure(v, f"{path}#{k}")
            )
        return out
    if isinstance(obj, list):
        return [_structure(v, path) for v in obj]
    return obj


@pytest.mark.parametrize(
    "name", ["pretrain", "pretrain_global", "train", "train_supervised", "evaluate", "multi_gpu_train"]
)
def test_bundles_differ_in_data_only(name):
    acdc, mmwhs = (json.loads((REPO / "bundles" / b / "configs" / f"{name}.json").read_text()) for b in BUNDLES)
    assert _structure(acdc) == _structure(mmwhs)


def test_inference_configs_differ_in_orientation_only():
    acdc, mmwhs = (json.loads((REPO / "bundles" / b / "configs" / "inference.json").read_text()) for b in BUNDLES)
    orient = [t["_target_"] for t in acdc["preprocessing"]["transforms"]][2], [
        t["_target_"] for t in mmwhs["preprocessing"]["transforms"]
    ][2]
    assert orient == ("ideal_components.data.preprocessing.OrientSliceAxisLastd", "Orientationd")
    for c in (acdc, mmwhs):
        c["preprocessing"]["transforms"].pop(2)
    assert _structure(acdc) == _structure(mmwhs)


def _sync_bundles():
    """``tools/sync_bundles.py``, imported from its file (``tools/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("sync_bundles", REPO / "tools" / "sync_bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mmwhs_configs_are_written_from_acdc():
    """The method is written once: the MM-WHS configs are ACDC's with MM-WHS's values put in, byte for byte."""
    stale = _sync_bundles().differences()
    assert not stale, (
        f"bundles/ideal_mmwhs/configs/{stale} are not what tools/sync_bundles.py writes: change the method in "
        "bundles/ideal_acdc/configs (MM-WHS's own values in bundles/ideal_mmwhs/dataset_values.json), then run "
        "`python tools/sync_bundles.py`"
    )


def test_bundle_readmes_are_written_from_the_template():
    """Both bundles' docs/README.md are bundles/README.template.md with each bundle's values filled in, byte for byte
    (so the two READMEs cannot drift apart, nor from the configs' defaults)."""
    stale = _sync_bundles().readme_differences()
    assert not stale, (
        f"{[str(p.relative_to(REPO)) for p in stale]} are not what tools/sync_bundles.py writes: edit "
        "bundles/README.template.md (a dataset's own text in its bundle's dataset_values.json), then run "
        "`python tools/sync_bundles.py`"
    )


def test_sync_bundles_readme_follows_template_and_configs(tmp_path):
    sync = _sync_bundles()
    source, target = tmp_path / "ideal_acdc", tmp_path / "ideal_mmwhs"
    for bundle, path in [("ideal_acdc", source), ("ideal_mmwhs", target)]:
        shutil.copytree(REPO / "bundles" / bundle / "configs", path / "configs")
        shutil.copytree(REPO / "bundles" / bundle / "docs", path / "docs")
        shutil.copy(REPO / "bundles" / bundle / "dataset_values.json", path)
    template = tmp_path / "README.template.md"
    shutil.copy(sync.TEMPLATE, template)
    assert sync.readme_differences(source, target, template) == []
    train = json.loads((source / "configs" / "train.json").read_text())
    train["spatial_size"] = [224, 224]  # ACDC's default changes: its README follows, MM-WHS keeps its own value
    (source / "configs" / "train.json").write_text(sync.config_text(train))
    assert sync.readme_differences(source, target, template) == [source / "docs" / "README.md"]
    assert "`[224, 224]`" in sync.readmes(source, target, template)[source / "docs" / "README.md"].decode()
    template.write_text(template.read_text() + "\nOne more line.\n")  # a template change reaches both
    assert len(sync.readme_differences(source, target, template)) == 2
    template.write_text(template.read_text() + "{{no_such_value}}\n")
    with pytest.raises(KeyError, match="no_such_value"):
        sync.readmes(source, target, template)


def test_sync_bundles_catches_drift_and_renamed_ids(tmp_path):
    sync = _sync_bundles()
    source, target = tmp_path / "acdc", tmp_path / "mmwhs"
    shutil.copytree(REPO / "bundles" / "ideal_acdc" / "configs", source / "configs")
    shutil.copytree(REPO / "bundles" / "ideal_mmwhs" / "configs", target / "configs")
    shutil.copy(REPO / "bundles" / "ideal_mmwhs" / "dataset_values.json", target)
    assert sync.differences(source, target) == []
    train = json.loads((source / "configs" / "train.json").read_text())
    train["learning_rate"] = 1e-4  # a method change made in ACDC only
    (source / "configs" / "train.json").write_text(sync.config_text(train))
    assert sync.differences(source, target) == ["train.json"]
    assert json.loads(sync.render(source, target)["train.json"])["num_classes"] == 8  # MM-WHS's value kept
    (target / "dataset_values.json").write_text(json.dumps({"train.json": {"no_such_id": 1}}))
    with pytest.raises(KeyError, match="no_such_id"):
        sync.render(source, target)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    root = REPO / "bundles" / bundle / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", str(root / "metadata.json"), "--config_file", str(root / "inference.json")]
    cmd += ["--backbone", "resnet10", "--n", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# end to end: phantoms -> prepare -> pretrain -> train -> evaluate -> inference -> TorchScript export


@pytest.mark.slow
def test_pretrain_paper_head_multi_level_on_cine_frames(tmp_path):
    """The paper's head (one 1x1 convolution) on several encoder levels runs from the bundle, here on the cine
    frames' pre-training list, with negatives from the other images; the pretext accuracy reaches TensorBoard; the
    saved encoder loads strictly into the fine-tuning network."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    python_ok("-m", "ideal_components", "synth_acdc", str(raw), "--patients", "4", "--seed", "1", "--with_4d", "True")
    python_ok(
        "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "4.0", "--spatial_size", "64",
        "--cine_frames", "3",
    )  # fmt: skip
    items = json.loads((prepared / "datalist.json").read_text())["pretraining"]
    args = ["--dataset_dir", str(prepared), "--max_epochs", "1", "--feature_level", "[-1,-2]", "--head_layers", "1"]
    args += ["--pretrain_list", "pretraining", "--batch_negatives", "True"]  # and the harder pretext
    out = run_bundle_ok("ideal_acdc", ["pretrain.json"], run, *TINY, *args)
    assert f"/{sum(item['num_slices'] for item in items)} " in out  # CacheDataset's progress: every cine slice
    events = EventAccumulator(str(run / "logs" / "pretrain"))
    events.Reload()
    assert {"pretrain_loss", "pretext_accuracy"} <= set(events.Tags()["scalars"])
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("pretext_accuracy"))
    state = torch.load(run / "models" / "pretrained_encoder.pt", map_location="cpu", weights_only=True)
    from monai.networks.nets import FlexibleUNet

    FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2).encoder.load_state_dict(state, strict=True)
    checkpoint = torch.load(next((run / "models").glob("pretrain_checkpoint_epoch=1.pt")), weights_only=True)
    assert {"head.0.layers.0.weight", "head.1.layers.0.weight"} <= set(checkpoint["network"])


@pytest.mark.slow
def test_acdc_end_to_end(tmp_path):
    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    python_ok("-m", "ideal_components", "synth_acdc", str(raw), "--patients", "8", "--seed", "1")
    python_ok(
        "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "4.0", "--spatial_size", "64"
    )
    data = ["--dataset_dir", str(prepared)]
    run_bundle_ok("ideal_acdc", ["pretrain.json"], run, *TINY, *data, "--max_epochs", "1")
    encoder = run / "models" / "pretrained_encoder.pt"
    assert encoder.is_file()

    schedule = ["--warmup_epochs", "1", "--cosine_decay", "True"]
    out = run_bundle_ok(
        "ideal_acdc", ["train.json"], run, *TINY, *data, *schedule, "--max_epochs", "2", "--val_interval", "1"
    )
    assert "loaded pretrained encoder weights" in out
    checkpoint = torch.load(next((run / "models").glob("train_checkpoint_epoch=2.pt")), weights_only=True)
    assert checkpoint["lr_scheduler"]["last_epoch"] == checkpoint["trainer"]["iteration"] > 0  # stepped per iteration
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    model_pt = run / "models" / "model.pt"
    state = torch.load(model_pt, map_location="cpu", weights_only=True)
    from monai.networks.nets import FlexibleUNet

    FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2, upsample="deconv").load_state_dict(state, strict=True)
    assert list((run / "models").glob("train_checkpoint_epoch=2.pt")), "full training checkpoint missing"
    assert list((run / "logs" / "train").glob("events.out.tfevents.*")), "TensorBoard log missing"

    out = run_bundle_ok("ideal_acdc", ["train.json", "evaluate.json"], run, *TINY, *data)
    eval_dir = run / "eval"
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    n_test = len(json.loads((prepared / "datalist.json").read_text())["test"])
    assert len((eval_dir / "metrics_per_volume.csv").read_text().strip().splitlines()) == 1 + 3 * n_test
    assert 0.0 <= summary["metrics"]["dice"]["mean"] <= 1.0
    assert len(list((eval_dir / "predictions").glob("*_seg.nii.gz"))) == n_test
    assert (eval_dir / "report.md").is_file() and len(list((eval_dir / "overlays").glob("*.png"))) == n_test
    assert "DSC" in out
    # the same metrics against the raw labels at the scanner's spacing, through the datalist provenance
    raw_rows = (eval_dir / "metrics_per_volume_raw.csv").read_text().strip().splitlines()
    assert len(raw_rows) == 1 + 3 * n_test and "At the raw resolution" in out

    # inference on a raw volume: the output is in the input's own geometry
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = raw / "training" / "patient003" / "patient003_frame01.nii.gz"
    (inputs / src.name).write_bytes(src.read_bytes())
    run_bundle_ok(
        "ideal_acdc", ["inference.json"], run, *TINY, "--dataset_dir", str(inputs), "--pixdim", "[4.0,4.0,-1]"
    )
    check_segmentation(run / "predictions" / "patient003_frame01_seg.nii.gz", src, 4)
    assert (inputs / src.name).read_bytes() == src.read_bytes()

    # the model zoo's TorchScript export of model.pt
    ts = tmp_path / "model.ts"
    root = REPO / "bundles" / "ideal_acdc" / "configs"
    cmd = ["-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(model_pt)]
    cmd += ["--meta_file", str(root / "metadata.json"), "--config_file", str(root / "inference.json")]
    python_ok(*cmd, "--backbone", "resnet10")
    scripted = torch.jit.load(str(ts))
    assert scripted(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.slow
def test_mmwhs_train_and_infer(tmp_path):
    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    python_ok("-m", "ideal_components", "synth_mmwhs", str(raw), "--volumes", "5", "--seed", "2")
    python_ok(
        "-m", "ideal_components", "prepare_mmwhs", str(raw), str(prepared), "--pixdim", "6.0", "--spatial_size", "32"
    )
    tiny = [*TINY[:4], "--spatial_size", "[32,32]", "--batch_size", "4", "--dataset_dir", str(prepared)]
    run_bundle_ok("ideal_mmwhs", ["train.json"], run, *tiny, "--max_epochs", "1", "--use_pretrained", "False")
    assert (run / "models" / "model.pt").is_file()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = sorted(raw.glob("mr_train_*_image.nii.gz"))[0]
    (inputs / src.name).write_bytes(src.read_bytes())
    run_bundle_ok(
        "ideal_mmwhs", ["inference.json"], run, *tiny[:-2], "--dataset_dir", str(inputs), "--pixdim", "[6.0,6.0,-1]"
    )
    check_segmentation(run / "predictions" / src.name.replace(".nii.gz", "_seg.nii.gz"), src, 8)
