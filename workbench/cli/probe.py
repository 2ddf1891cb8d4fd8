"""`workbench probe depth|maps`: how much does each layer contribute?"""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command

DEPTH_DESCRIPTION = textwrap.dedent("""\
    Measure how much each layer contributes (Csordas, Manning, Potts 2025), and store tidy tables:
      probe_sublayer      per layer: ||a||/||h||, ||m||/||h+a||, ||a+m||/||h|| and cosines (mean, max over tokens)
      probe_skip_layers   skip layer s before position t: relative change of every later layer's update at >= t
      probe_skip_output   ... and of the output distribution (L2 of the probability change, KL)
      probe_logit_lens    per layer: KL to the final distribution and top-5 overlap
      probe_depth_scores  the effect-weighted mean layer index for the task
    One clean forward pass per batch feeds every probe; skipping adds one pass per skipped layer,
    on the first --skip-tokens tokens. The BOS position is excluded everywhere.
""")


def add_probe(sub, name: str, help_text: str) -> None:
    from workbench.models import BACKENDS
    from workbench.probes.depth import DepthProbeConfig, run_depth_probes
    from workbench.probes.linear_maps import LinearMapsConfig, run_linear_maps

    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:])
    probe_sub = parser.add_subparsers(dest="probe_command", required=True, metavar="{depth,maps}")

    def report_depth(config, result) -> None:
        print(
            f"Stored depth probes as '{result.probe_run.probe_run}'. For example:\n"
            f"  workbench sql {config.store} \"SELECT * FROM probe_depth_scores WHERE probe_run = '{result.probe_run.probe_run}'\""
        )

    def report_maps(config, result) -> None:
        print(
            f"Stored linear maps as '{result.probe_run.probe_run}'. For example:\n"
            f"  workbench sql {config.store} \"SELECT * FROM probe_linear_maps WHERE probe_run = '{result.probe_run.probe_run}' "
            'ORDER BY rel_error LIMIT 10"'
        )

    add_command(
        probe_sub,
        "depth",
        "sublayer norm ratios and cosines, layer skipping, logit lens, depth score",
        DepthProbeConfig,
        run_depth_probes,
        report_depth,
        description=DEPTH_DESCRIPTION,
        epilog="example:\n  workbench probe depth --model smollm2-135m --corpus default --tokens 20000 --store store/",
        choices={"backend": list(BACKENDS)},
    )
    add_command(
        probe_sub,
        "maps",
        "linear maps from each layer of one model to each layer of another",
        LinearMapsConfig,
        run_linear_maps,
        report_maps,
        choices={"backend": list(BACKENDS)},
        description="Fit an affine map from every layer of --source to every layer of --target on the same "
        "text and store the held-out relative error ||pred - target|| / ||target|| (table "
        "probe_linear_maps). Tokens are aligned by their position in the text.",
        epilog="example:\n  workbench probe maps --source smollm2-135m --target smollm2-135m --store store/",
    )


COMMANDS = {"probe": add_probe}
