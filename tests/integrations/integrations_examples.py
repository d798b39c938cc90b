"""Load the runnable scripts of examples/ as modules (they are not a package)."""
import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str):
    module_name = f"mlrb_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module    # so that pickling its classes works
        spec.loader.exec_module(module)
    return sys.modules[module_name]

