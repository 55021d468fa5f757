"""One set of defaults (issue #26): the Python API's defaults equal the values the bundle configs give.

Every component a config builds from ``ideal_components`` (``_target_``) and every ``ideal_components`` function a
config expression calls is compared, argument by argument, with its signature's default, on both bundles and on
each config set the bundles run (``pretrain.json``, ``train.json``, and the files merged over them). A config value
counts when it is a literal, a reference (``@id``) to one, or an expression of literals only (``$@rampup_fraction *
@max_epochs``); values read from data, the device or other components (``epoch_length``, ``amp``) are not literals
and are not compared. MONAI's own arguments passed on through ``**kwargs`` (``SupervisedTrainer``'s ``amp``, ...)
keep MONAI's defaults and are not compared either (``amp``: see the last test). A difference fails unless it is
listed with its reason (``EXCEPTIONS``: method settings; ``DATASET_ARGUMENTS``; ``CALL_SITE_ARGUMENTS``: the role a
component plays at one place), and a listed exception that no config needs any more fails too.

Settings the bundles leave to the Python defaults (``CrossPseudoLabelTrainer``'s ``batch_statistics``, the group
BatchNorm ``implementation``) agree by construction; ``channels_last`` is a config setting with no Python argument.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["ideal_acdc", "ideal_mmwhs"]
# the config sets the bundles run: a base config and the files merged over it (README, metadata)
RUNS = [
    ("pretrain.json",),
    ("pretrain.json", "pretrain_global.json"),
    ("pretrain.json", "multi_gpu_train.json"),
    ("train.json",),
    ("train.json", "train_supervised.json"),
    ("train.json", "multi_gpu_train.json"),
    ("train.json", "evaluate.json"),
    ("inference.json",),
]

# Method settings: (callable, argument) -> why the Python default differs from the bundles' value in every config
# set; (callable, argument, config file) -> the same, for the config sets that merge that file only
EXCEPTIONS: dict[tuple[str, ...], str] = {
    ("ideal_components.losses.CrossPseudoLabelLoss", "rampup_epochs"): (
        "the bundles ramp up over rampup_fraction (0.1) x max_epochs, a length the loss cannot know; a fixed number "
        "of epochs as the default would be 0.1 x max_epochs for one run length only (a 10-epoch ramp-up never "
        "reaches full weight in a 5-epoch run), so the Python default is no ramp-up and the docstring says the rule"
    ),
    ("ideal_components.networks.TwoBranchFlexibleUNet", "is_pad"): (
        "the bundles derive it from spatial_size (no padding for sizes divisible by 32, which torch.compile needs; "
        "the outputs are the same); the Python default pads, so that any input size works"
    ),
    ("ideal_components.networks.DenseContrastiveNet", "head_layers", "pretrain_global.json"): (
        "Global CL uses SimCLR's two-layer MLP head on purpose, a config override; the default is the paper's "
        "dense head, one 1x1 convolution (pretrain.json)"
    ),
    ("ideal_components.networks.DenseContrastiveNet", "pool_before_head", "pretrain_global.json"): (
        "pooling before the head is what makes the Global CL baseline global, a config override"
    ),
    ("ideal_components.engines.CrossPseudoLabelTrainer", "compile_kwargs"): (
        "not a difference: None stands for {'dynamic': False} (_TwoStageTrainerBase), which train.json spells out"
    ),
}

# arguments that are the dataset's, for any callable: no one default fits both bundles
DATASET_ARGUMENTS: dict[str, str] = {
    "num_classes": "the number of classes is the dataset's (4 for ACDC, 8 for MM-WHS)",
    "out_channels": "the number of classes is the dataset's",
    "class_names": "the dataset's class names",
    "reader": "the bundles read NIfTI with NibabelReader; the Python default lets MONAI pick a reader per file",
}

# arguments that say which role a component plays at one place of a config (this list is the unlabelled one, this
# split must carry labels), not a setting of the method: (callable, argument) -> the role
CALL_SITE_ARGUMENTS: dict[tuple[str, str], str] = {
    ("ideal_components.data.slices.expand_to_slices", "labeled"): "the pre-training and the unlabelled lists",
    ("ideal_components.data.checks.TrainingDataCheck", "required"): "the lists that a config needs non-empty",
    ("ideal_components.data.checks.TrainingDataCheck", "labeled"): "the lists whose items carry a label",
    ("ideal_components.data.checks.DatalistCheck", "require_label"): "evaluation scores against labels",
    ("ideal_components.data.checks.DatalistCheck", "label_key"): "inference inputs have no label",
    ("ideal_components.transforms.ExtractSliced", "allow_missing_keys"): "unlabelled slices have no label file",
    ("ideal_components.inference.SaveSegmentationd", "geometry"): (
        "evaluate.json writes predictions on the prepared grid it scores; the default, the input's grid, is "
        "inference's"
    ),
    ("ideal_components.encoders.load_pretrained_encoder", "required"): (
        "the bundles call it only when use_pretrained is true, so a missing file is an error there"
    ),
    ("ideal_components.handlers.CheckpointResumer", "enabled"): (
        "the bundles build the resumer in every run and switch it with resume (false: a new run); a resumer built "
        "in Python is meant to resume"
    ),
}

_MISSING = object()
_SAFE_CALLS = {"any": any, "all": all, "len": len, "min": min, "max": max, "int": int, "float": float, "abs": abs}
_SAFE_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Name, ast.Load, ast.Store,
    ast.Call, ast.GeneratorExp, ast.ListComp, ast.comprehension, ast.IfExp, ast.List, ast.Tuple, ast.operator,
    ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip
_REFERENCE = re.compile(r"@([\w#:]+)")


def _parser(bundle: str, names: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / n) for n in names])
    parser.parse()  # macros (%) and relative ids resolved; nothing instantiated
    return parser


def _literal(parser: ConfigParser, value: Any, depth: int = 0) -> Any:
    """``value`` as a literal: references followed, literal-only expressions evaluated; ``_MISSING`` otherwise."""
    if depth > 20:
        return _MISSING
    if isinstance(value, str) and value.startswith("@"):
        return _literal(parser, parser.get(value[1:], _MISSING), depth + 1)
    if isinstance(value, str) and value.startswith("$"):
        return _expression(parser, value[1:], depth)
    if isinstance(value, dict):
        if "_target_" in value:
            return _MISSING
        items = {k: _literal(parser, v, depth + 1) for k, v in value.items() if not str(k).startswith("_")}
        return _MISSING if _MISSING in items.values() else items
    if isinstance(value, (list, tuple)):
        items = [_literal(parser, v, depth + 1) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else items
    return value


def _expression(parser: ConfigParser, code: str, depth: int) -> Any:
    """Evaluate an expression of literals and a few builtins (no attribute, no import); ``_MISSING`` otherwise."""
    names: dict[str, Any] = {}

    def substitute(match: re.Match) -> str:
        names[f"_ref{len(names)}"] = _literal(parser, "@" + match.group(1), depth + 1)
        return f"_ref{len(names) - 1}"

    code = _REFERENCE.sub(substitute, code)
    if any(v is _MISSING for v in names.values()):
        return _MISSING
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return _MISSING
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return _MISSING
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS):
            return _MISSING
    return eval(compile(tree, "<config>", "eval"), {"__builtins__": {}, **_SAFE_CALLS}, names)


def _locate(name: str) -> Callable | None:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def defaults(obj: Callable) -> dict[str, Any]:
    """The arguments with a default of a function or class, with those its ``ideal_components`` bases take through
    ``**kwargs`` (``_TwoStageTrainerBase``'s ``compile_kwargs``); MONAI's own are not followed."""
    out: dict[str, Any] = {}
    chain = [obj]
    if inspect.isclass(obj):
        chain = [c for c in inspect.getmro(obj) if c.__module__.startswith("ideal_components")]
    for fn in chain:
        params = inspect.signature(fn).parameters
        for name, p in params.items():
            if p.default is not inspect.Parameter.empty and name not in out:
                out[name] = p.default
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def _sites(parser: ConfigParser) -> list[tuple[str, str, dict[str, Any]]]:
    """``(config id, callable name, {argument: raw config value})`` of every ``ideal_components`` component and call."""
    sites = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target.startswith("ideal_components."):
                sites.append((path, target, {k: v for k, v in node.items() if not str(k).startswith("_")}))
            for k, v in node.items():
                walk(v, f"{path}#{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}#{i}")
        elif isinstance(node, str) and node.startswith("$") and "ideal_components." in node:
            code = _REFERENCE.sub(lambda m: "_ref", node[1:])
            for call in ast.walk(ast.parse(code.strip(), mode="eval")):
                if isinstance(call, ast.Call) and ast.unparse(call.func).startswith("ideal_components."):
                    kwargs = {k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)}
                    sites.append((path, ast.unparse(call.func), kwargs))

    walk(parser.config, "")
    return sites


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def differences(bundle: str) -> list[tuple[tuple[str, ...], str, str, Any, Any]]:
    """``(config set, callable, argument, Python default, bundle value)`` wherever both are literals and differ."""
    found = []
    for names in RUNS:
        parser = _parser(bundle, names)
        for path, target, args in _sites(parser):
            obj = _locate(target)
            assert obj is not None, f"{bundle} {names}: {path} names {target}, which does not exist"
            signature_defaults = defaults(obj)
            for arg, raw in args.items():
                value = _literal(parser, raw)
                if arg in signature_defaults and value is not _MISSING and not _same(signature_defaults[arg], value):
                    found.append((names, target, arg, signature_defaults[arg], value))
    return found


def _exception(names: tuple[str, ...], target: str, arg: str) -> tuple[str, ...] | None:
    """The key of the listed exception that explains a difference, or None."""
    if arg in DATASET_ARGUMENTS:
        return (arg,)
    if (target, arg) in EXCEPTIONS or (target, arg) in CALL_SITE_ARGUMENTS:
        return (target, arg)
    scoped = [key for key in EXCEPTIONS if key[:2] == (target, arg) and len(key) == 3 and key[2] in names]
    return scoped[0] if scoped else None


@pytest.mark.parametrize("bundle", BUNDLES)
def test_python_defaults_equal_the_bundle_values(bundle):
    found = differences(bundle)
    unexplained = [
        f"{'+'.join(n)}: {t}({a}=...) default {d!r}, bundle {v!r}" for n, t, a, d, v in found if not _exception(n, t, a)
    ]
    assert not unexplained, "Python defaults that differ from the bundle's:\n" + "\n".join(unexplained)
    used = {_exception(n, t, a) for n, t, a, _, _ in found}
    listed = set(EXCEPTIONS) | set(CALL_SITE_ARGUMENTS) | {(a,) for a in DATASET_ARGUMENTS}
    assert not listed - used, f"exceptions that no config needs any more: {sorted(listed - used)}"


def test_the_comparison_sees_the_arguments_it_should():
    """The walk finds the components, follows references and evaluates literal expressions (a broken walk would
    find no difference and pass)."""
    parser = _parser("ideal_acdc", ("train.json",))
    sites = {(path, target): args for path, target, args in _sites(parser)}
    loss = sites[("loss", "ideal_components.losses.CrossPseudoLabelLoss")]
    assert _literal(parser, loss["rampup_epochs"]) == pytest.approx(10.0)  # $@rampup_fraction * @max_epochs
    assert _literal(parser, loss["dice_weight"]) == 0.0
    network = sites[("network_def", "ideal_components.networks.TwoBranchFlexibleUNet")]
    assert _literal(parser, network["is_pad"]) is False  # $any(s % 32 for s in @spatial_size)
    assert _literal(parser, "$ideal_components.data.sampler.batches_per_pass(1, 2, 3, 4)") is _MISSING
    assert _literal(parser, "@train#datalist") is _MISSING
    calls = {target for _, target, _ in _sites(parser)}
    assert "ideal_components.encoders.load_pretrained_encoder" in calls
    pretrain = {target: args for _, target, args in _sites(_parser("ideal_acdc", ("pretrain.json",)))}
    assert set(pretrain["ideal_components.engines.ContrastivePretrainTrainer"]) >= {"max_shift", "view_keys"}
    assert "compile_kwargs" in defaults(_locate("ideal_components.engines.CrossPseudoLabelTrainer"))
    assert {(t, a) for _, t, a, _, _ in differences("ideal_acdc")} >= {
        ("ideal_components.losses.CrossPseudoLabelLoss", "rampup_epochs")
    }


def test_probe_views_follow_pretraining():
    """The linear probe's pretext views repeat ``pretrain.json``'s settings (its docstring: "as in pre-training")."""
    from ideal_components.experiments.probe import probe

    probe_defaults = defaults(probe)
    for bundle in BUNDLES:
        parser = _parser(bundle, ("pretrain.json",))
        for arg, config_id in (
            ("max_shift", "max_shift"),
            ("brightness", "brightness"),
            ("contrast", "contrast"),
            ("pretext_level", "feature_level"),
        ):
            assert _same(probe_defaults[arg], _literal(parser, "@" + config_id)), (bundle, arg)


def test_trainers_amp_default_is_the_bundles_on_cpu_and_ampere(monkeypatch):
    """``amp`` is device-dependent in the bundles (``default_amp(@device)``); the trainers keep
    ``SupervisedTrainer``'s ``amp=False``, which is ``default_amp`` on the CPU and on CUDA from Ampere on (the GPUs
    measured); before Ampere and on ROCm the bundles turn it on (``default_amp``'s docstring)."""
    from monai.engines import SupervisedTrainer

    from ideal_components.engines import default_amp

    amp = inspect.signature(SupervisedTrainer).parameters["amp"].default
    assert amp is default_amp("cpu") is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    assert amp is default_amp("cuda:0")
