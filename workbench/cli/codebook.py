"""`workbench codebook train|encode|steer`: codebook features at sublayer outputs."""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command
from workbench.cli.options import comma_list_keeping_spaces

TRAIN_DESCRIPTION = textwrap.dedent("""\
    Put a codebook bottleneck after each site (Tamkin et al., "Codebook Features"): the site's output is
    replaced by the sum of the k codes most cosine-similar to it. The codes are initialised by k-means on
    the plain model's activations, then the model is fine-tuned with the bottlenecks in place under
    LM loss + --recon-coefficient * relative reconstruction error. The codebooks learn at --codebook-lr
    and the model at --model-lr, much lower (0 freezes it): the straight-through gradient the model
    gets is only an estimate, and at the codebooks' rate it wrecks the model.

    The held-out LM loss before and after is stored in the `codebooks` table (lm_loss_increase).
    A checkpoint is written every --checkpoint-seconds: after an interruption, run the same command
    again and it resumes. Files: <store>/codebooks/<name>/.
    Sites: blocks.{l}.attn.hook_out (the attention output), blocks.{l}.attn.hook_z (each head's output
    before the output projection, one codebook per head: code c is head c // --codes's) and
    blocks.{l}.mlp.hook_out.
""")
TRAIN_EPILOG = textwrap.dedent("""\
    examples:
      workbench codebook train --model smollm2-135m --sites blocks.3.mlp.hook_out,blocks.3.attn.hook_out --tokens 64k \\
                               --store store/
      workbench codebook encode --store store/ --codebook <name> --run <harvest run>
      workbench codebook steer --store store/ --codebook <name> --site blocks.3.mlp.hook_out --code 17 \\
                               --prompt "Once upon a time"
""")
ENCODE_EPILOG = textwrap.dedent("""\
    then, for example:
      workbench sql store/ "SELECT t.token, count(*) AS n FROM codebook_codes c JOIN tokens t USING (run, token_id)
                            WHERE c.codebook = '<name>' AND c.site = 'blocks.3.mlp.hook_out' AND c.code = 17
                            GROUP BY t.token ORDER BY n DESC LIMIT 10"
""")
STEER_DESCRIPTION = textwrap.dedent("""\
    Sample --samples continuations of the prompt twice with the same seeds: as the model is, and with
    the code forced on at the site at every position (--mode swap: in place of the weakest of its k
    codes; --mode only: in all k slots). A continuation shows the target behaviour if it contains one
    of the --targets strings; by default they are the 5 tokens with a letter or digit that the code
    fires on most (needs `workbench codebook encode` first).
""")


def report_train(config, result) -> None:
    record = result.codebook
    before, after, bypassed = record.lm_loss_original, record.lm_loss_codebooks, record.lm_loss_bypassed
    print(
        f"Codebooks '{record.name}' are trained. Held-out LM loss: original model {before:.4f}, with codebooks "
        f"{after:.4f} ({after - before:+.4f} nats).\nThe fine-tuned model with its codebooks bypassed: {bypassed:.4f}, "
        f"so the codebooks themselves cost {after - bypassed:+.4f} nats. Relative reconstruction error "
        f"{record.recon_error:.3f}.\n"
        f"Next: workbench codebook encode --store {config.store} --codebook {record.name} --run <a harvest run of "
        "this model>"
    )


def report_encode(config, result) -> None:
    print(
        f"Wrote {result.rows:,} (token, site, code) rows for '{result.codebook.name}' on run '{result.run}' "
        "(table codebook_codes)."
    )


def report_steer(config, result) -> None:
    print(f"targets: {', '.join(repr(t) for t in result.targets)}")
    for label, texts in (("baseline", result.baseline), ("steered", result.steered)):
        print(f"\n{label}:")
        for text in texts[:5]:
            print(f"  {config.prompt}|{text!r}")
    print(
        f"\nshare showing a target: baseline {result.baseline_rate:.2f}, steered {result.steered_rate:.2f} "
        f"({config.samples} samples each, same seeds)"
    )


def add_codebook(sub, name: str, help_text: str) -> None:
    from workbench.codebooks.steer import SteerConfig, run_codebook_steer
    from workbench.codebooks.train import (
        CodebookEncodeConfig,
        CodebookTrainConfig,
        run_codebook_encode,
        run_codebook_train,
    )

    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:])
    codebook_sub = parser.add_subparsers(dest="codebook_command", required=True, metavar="{train,encode,steer}")
    add_command(
        codebook_sub,
        "train",
        "fine-tune a model with codebook bottlenecks at chosen sublayer outputs",
        CodebookTrainConfig,
        run_codebook_train,
        report_train,
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG,
        flags={"n_codes": ["--codes"]},
        choices={"reduce": ["sum", "mean"]},
    )
    add_command(
        codebook_sub,
        "encode",
        "write the codes that fire on each token of a harvest run into codebook_codes",
        CodebookEncodeConfig,
        run_codebook_encode,
        report_encode,
        description="Run the model with its codebooks over a harvest run's token contexts and store one\n"
        "(token, site, code) row per code that fires, keyed by the run's token ids.",
        epilog=ENCODE_EPILOG,
    )
    add_command(
        codebook_sub,
        "steer",
        "generate with a code forced on, and count how often the target behaviour appears",
        SteerConfig,
        run_codebook_steer,
        report_steer,
        description=STEER_DESCRIPTION,
        epilog="example:\n  workbench codebook steer --store store/ --codebook <name> --site "
        'blocks.3.mlp.hook_out --code 17 --prompt "Once upon a time" --targets " dragon, dragons"',
        choices={"mode": ["swap", "only"]},
        parsers={"targets": comma_list_keeping_spaces},
    )


COMMANDS = {"codebook": add_codebook}
