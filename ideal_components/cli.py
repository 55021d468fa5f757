"""Command line: ``python -m ideal_components COMMAND [--option value ...]`` (parsed by python-fire).

Only the module of the command that is run gets imported, so ``--help`` stays fast and every command shows the
real signature and docstring of the function behind it (``python -m ideal_components prepare_acdc --help``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

__all__ = ["COMMANDS", "main"]

# command name -> "module:function"
COMMANDS: dict[str, str] = {
    "synth_acdc": "ideal_components.synthetic.acdc:synth_acdc",
    "synth_mmwhs": "ideal_components.synthetic.mmwhs:synth_mmwhs",
    "prepare_acdc": "ideal_components.data.acdc:prepare_acdc",
    "prepare_mmwhs": "ideal_components.data.mmwhs:prepare_mmwhs",
    "report": "ideal_components.reporting.report:report",
    "sweep": "ideal_components.experiments.sweep:sweep",
    "package_bundle": "ideal_components.package:package_bundle",
    "export_onnx": "ideal_components.export:export_onnx",
    "probe": "ideal_components.experiments.probe:probe",
}


def _usage() -> str:
    lines = ["usage: python -m ideal_components COMMAND [--option value ...]", "", "commands:"]
    lines += [f"  {name:<14} {target.replace(':', '.')}" for name, target in COMMANDS.items()]
    lines += ["", "python -m ideal_components COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        sys.exit(f"error: unknown command {command!r}.\n\n{_usage()}")
    module_name, func_name = COMMANDS[command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    fire.Fire(func, command=rest, name=f"python -m ideal_components {command}")


if __name__ == "__main__":
    main()
