"""`workbench harvest`: a model over a corpus, activations at hook points into a store."""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command
from workbench.harvest import HarvestConfig, HarvestResult, run_harvest

DESCRIPTION = textwrap.dedent("""\
    Run a model over a corpus and stream the activations at the given hook points into a store.

    The forward pass stops after the deepest hook, so layers past it cost nothing. Work is
    committed one chunk of contexts at a time: if the harvest is interrupted (Ctrl-C, kill -9,
    power loss), run the same command again and it resumes where the last commit left off.
    While it runs, `workbench sql` and `workbench store info` read the last committed state.
""")

EPILOG = textwrap.dedent("""\
    hook points (canonical TransformerLens bridge names; i is the layer):
      blocks.i.hook_in        residual stream entering block i   (legacy: blocks.i.hook_resid_pre)
      blocks.i.attn.hook_out  attention output                   (legacy: blocks.i.hook_attn_out)
      blocks.i.attn.hook_z    each head's output before the output projection
      blocks.i.mlp.hook_in    MLP input, after the pre-MLP norm
      blocks.i.mlp.hook_out   MLP output                         (legacy: blocks.i.hook_mlp_out)
      blocks.i.hook_out       residual stream leaving block i    (legacy: blocks.i.hook_resid_post)

    examples:
      workbench harvest --model smollm2-135m --hooks blocks.6.hook_out,blocks.6.mlp.hook_in,blocks.6.mlp.hook_out \\
                        --corpus default --tokens 50000 --store store/
      workbench harvest --model tiny --hooks blocks.1.hook_out --tokens 4096 --store /tmp/s --backend nnsight
      workbench harvest --model ./my-hf-folder --hooks blocks.3.hook_out --corpus notes.jsonl --store store/ --run notes

    with Ray (actors hold the model and write shards; this process alone commits; a dead actor's chunk is redone;
    re-run the same command to resume; the store must be on a filesystem every node mounts at the same path):
      workbench harvest --model smollm2-135m --hooks blocks.6.hook_out --tokens 10M --store /shared/store --ray
      workbench harvest ... --ray --workers 4                    a local cluster of 4 CPU workers
      workbench harvest ... --ray 10.0.0.5:6379                   one actor per GPU of a running cluster
""")


def report(config: HarvestConfig, result: HarvestResult) -> None:
    if result.tokens_harvested_now == 0:
        print(f"Run '{result.run}' is already complete ({result.n_tokens} tokens); nothing to do.")
        return
    resumed = f", resumed after {result.chunks_resumed_from} committed chunks" if result.chunks_resumed_from else ""
    print(
        f"Run '{result.run}': harvested {result.tokens_harvested_now} tokens{resumed}; "
        f"{result.n_tokens} tokens stored. See `workbench store info {config.store}`."
    )


def add_harvest(sub, name: str, help_text: str) -> None:
    from workbench.models import BACKENDS

    add_command(
        sub,
        name,
        help_text,
        HarvestConfig,
        run_harvest,
        report,
        description=DESCRIPTION,
        epilog=EPILOG,
        choices={"backend": list(BACKENDS)},
        bare={"ray": "local"},
    )


COMMANDS = {"harvest": add_harvest}
