import sys

from mlrb.bench import main
from mlrb.cli import run_command

raise SystemExit(run_command("mlrb bench", main, sys.argv[1:]))
