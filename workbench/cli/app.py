"""`workbench app`: serve the Streamlit app on a store."""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from workbench.cli.common import add_command
from workbench.errors import WorkbenchError


@dataclass
class AppConfig:
    store: str
    """The store directory to explore."""
    port: int = 8501
    """Port to serve on."""
    host: str = "localhost"
    """Address to listen on: localhost serves this machine only; 0.0.0.0 shares it on the network."""
    device: str = "auto"
    """Where the model-backed pages (text inspector, codes) run the model: auto, cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Their model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, float16."""


def run_app(config: AppConfig) -> None:
    """Replace this process by Streamlit serving app/main.py, so that Ctrl-C and signals reach it directly."""
    from workbench.devices import resolve_placement
    from workbench.store import Store

    placement = resolve_placement(config.device, config.dtype)  # refused here, in the terminal, too
    store = Store.open_existing(config.store)  # fail here, in the terminal, rather than on an empty page
    main_script = Path(__file__).resolve().parents[2] / "app" / "main.py"
    if not main_script.exists():
        raise WorkbenchError(
            f"The app's files are not next to this installation ({main_script} is missing). The app "
            "ships with the source: clone the repository and `pip install -e .` from it."
        )
    os.environ["WORKBENCH_STORE"] = str(store.root)
    os.environ["WORKBENCH_DEVICE"], os.environ["WORKBENCH_DTYPE"] = placement.device_name, placement.dtype_name
    print(f"workbench app: http://{config.host}:{config.port}  (store {store.root}; Ctrl-C stops it)", file=sys.stderr)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(main_script),
        "--server.port",
        str(config.port),
        "--server.address",
        config.host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    sys.stdout.flush()
    os.execv(sys.executable, command)


DESCRIPTION = (
    "Serve the workbench app on this machine: overview, feature explorer, text inspector, layer "
    "contributions, circuits, codes and a read-only SQL console. It reads the last committed state, so it "
    "keeps working while a harvest or training run writes to the same store."
)
EPILOG = textwrap.dedent("""\
    examples:
      workbench app --store store/                 # then open http://localhost:8501
      workbench app --store store/ --port 8600
    a feature page has a stable address to share:
      http://localhost:8501/features?dict=demo-topk&feature=123
""")


def add_app(sub, name: str, help_text: str) -> None:
    add_command(
        sub, name, help_text, AppConfig, run_app, lambda config, result: 0, description=DESCRIPTION, epilog=EPILOG
    )


COMMANDS = {"app": add_app}
