"""The `workbench` command: one module per command group, each command built from its entry point's Config.

Every command is `run_<thing>(Config) -> Result` in the library (see docs/ARCHITECTURE.md); this package
only turns options into a Config (options.py) and a Result into text. A command group's module is
imported only when that command runs, so `workbench sql` never pays for loading nnsight.
"""

from __future__ import annotations

import importlib
import os
import sys

# Process-wide threading policy, set before torch loads its OpenMP runtime (torch is imported lazily, by the
# command that needs it). Busy-waiting OpenMP workers otherwise hold both cores of a small machine between
# forward passes and slow the shard writer and commit thread (bench/harvest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workbench.cli.common import make_parser  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402

# command: (module in this package, one-line help). The order is the order of `workbench --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "harvest": ("harvest", "run a model over a corpus and store activations at hook points"),
    "store": ("store", "inspect, verify and upgrade a store"),
    "sql": ("store", "read-only SQL against a store"),
    "probe": ("probe", "depth-usage probes: how much does each layer contribute?"),
    "train": ("dictionaries", "train a sparse dictionary on stored activations"),
    "eval": ("dictionaries", "evaluate a dictionary (core metrics, absorption, probing; seed bands) and compare all"),
    "encode": ("dictionaries", "write a dictionary's sparse feature activations and feature statistics into the store"),
    "import": ("dictionaries", "register a dictionary trained elsewhere: a folder, SAELens release/id or hf://"),
    "export": ("dictionaries", "write dictionaries in a peer's format (circuit-tracer transcoders and CLTs)"),
    "absorption": ("evals", "first-letter feature absorption of a dictionary (SAEBench's variant)"),
    "sparse-probing": ("evals", "top-k feature probes against a dense probe, on tasks from shipped text"),
    "explain": ("evals", "autointerp: LLM explanations of features, scored by detection and fuzzing"),
    "steer": ("evals", "generate with a dictionary feature added or clamped (error term kept)"),
    "ablate": ("evals", "the change in loss when a dictionary feature is zeroed"),
    "scores": ("evals", "every dictionary's evaluations side by side, with seed bands"),
    "circuit": ("circuit", "which parts of the model do a task? patching, discrete codes, attribution graphs"),
    "codebook": ("codebook", "codebook features: discrete codes at sublayer outputs, their contexts, steering"),
    "app": ("app", "explore the store in the browser (Streamlit)"),
    "models": ("models", "list the named models"),
}

EPILOG = """\
typical session:
  workbench harvest --model smollm2-135m --hooks blocks.6.hook_out --corpus default --tokens 50000 --store store/
  workbench store info store/
  workbench sql store/ "SELECT hook, count(*) FROM activations GROUP BY hook"
  workbench probe depth --model smollm2-135m --corpus default --tokens 20000 --store store/
  workbench train --store store/ --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 --tokens 2M
  workbench eval --store store/ --dict <name>; workbench encode --store store/ --dict <name>
  workbench eval --store store/ --dict <name> --benchmarks all --seeds 3; workbench explain --store store/ --dict <name>
  workbench app --store store/

Run `workbench COMMAND --help` for each command's options.
"""


def build_parser(only: str | None = None):
    """The full parser; with `only`, just that command is built out (its module imported), the rest listed."""
    parser = make_parser(
        "workbench",
        "Mechanistic-interpretability workbench: harvest activations into a DuckDB store, train sparse "
        "dictionaries, probe, trace circuits and explore it all in an app or with SQL.",
        EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        if only is None or only == name:
            importlib.import_module(f"workbench.cli.{module}").COMMANDS[name](sub, name, help_text.replace("%", "%%"))
        else:
            sub.add_parser(name, help=help_text.replace("%", "%%"), add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(only=chosen if chosen in COMMANDS else "").parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything committed so far is kept; run the same command again to resume.", file=sys.stderr
        )
        return 130
    except BrokenPipeError:
        # The reader went away (`workbench store info | head`): stop quietly, as `ls | head` does. Python would
        # still try to flush stdout at exit and print a second traceback, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell reports for a command stopped by a closed pipe
