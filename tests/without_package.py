"""Run ``python -m MODULE ARGS`` in a process where this repository's ``ideal_components`` cannot be imported.

Usage (from an unpacked bundle folder, as the model zoo runs a bundle): ``python tests/without_package.py monai.bundle
run --config_file configs/inference.json ...``. The editable install's import hook and the repository are removed
from the import machinery, the script checks that ``ideal_components`` is then not importable, puts the working
directory first on the import path (what ``python -m`` does) and runs the module. At exit it prints
``ideal_components imported from <file>`` so that a test can check which copy of the code ran.
"""

import atexit
import importlib.util
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _editable(obj) -> bool:
    return "editable" in (getattr(obj, "__module__", "") or "").lower() or "editable" in repr(obj).lower()


sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) not in (REPO, os.path.join(REPO, "tests"))]
sys.path_importer_cache.clear()
spec = importlib.util.find_spec("ideal_components")
if spec is not None:
    sys.exit(f"ideal_components is still importable from {spec.origin}")
sys.path.insert(0, os.getcwd())


@atexit.register
def _report() -> None:
    module = sys.modules.get("ideal_components")
    print(f"ideal_components imported from {getattr(module, '__file__', None)}")


module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
