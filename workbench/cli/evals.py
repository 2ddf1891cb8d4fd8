"""`workbench absorption|sparse-probing|explain|steer|ablate|scores`: evaluations beyond the core metrics."""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command, print_table


def print_scores(table) -> None:
    """Every dictionary's evaluations side by side (mean ± std over seeds where there are siblings)."""
    import pyarrow as pa

    from workbench.evals.table import metric_rows

    if not table:
        print("No complete dictionaries in the store.")
        return
    print_table(pa.table(metric_rows(table)))


def add_scores(sub, name: str, help_text: str) -> None:
    from workbench.evals.table import ScoresConfig, run_scores

    add_command(
        sub,
        name,
        help_text,
        ScoresConfig,
        run_scores,
        lambda config, result: print_scores(result.table),
        description="Every dictionary's evaluations side by side: core metrics, absorption, sparse probing and "
        "autointerp, as mean ± std over each dictionary's seed siblings (NAME-seed1, ...). Nothing is computed.",
    )


def add_absorption(sub, name: str, help_text: str) -> None:
    from workbench.evals.absorption import AbsorptionConfig, run_absorption
    from workbench.models import BACKENDS

    def report(config, result) -> None:
        s = result.scores
        print(
            f"{config.dictionary}: absorption rate {s.absorption_rate:.3f}, full absorption {s.full_absorption:.3f}, "
            f"{s.split_features:.2f} split features per letter, over {s.n_letters} letters"
            + (f" (left out: {', '.join(f'{k} {v}' for k, v in s.excluded.items())})" if s.excluded else "")
        )
        print(f'per letter: workbench sql {config.store} "SELECT task, metric, value, n FROM dictionary_scores '
              f"WHERE dictionary = '{config.dictionary}' AND benchmark = 'absorption' ORDER BY task, metric\"")  # fmt: skip

    add_command(
        sub,
        name,
        help_text,
        AbsorptionConfig,
        run_absorption,
        report,
        flags={"dictionary": ["--dict"]},
        choices={"backend": list(BACKENDS)},
        description=textwrap.dedent("""\
            First-letter feature absorption (Chanin et al., SAEBench's variant). A probe reads each word's first
            letter from the dictionary's hook; the dictionary's split features for each letter are found by k-sparse
            probing; a word is absorbed when those features stay silent and others aligned with the probe carry the
            letter. Reports the absorption rate (mean absorption fraction), the full-absorption score and the number
            of split features, per letter and overall, into dictionary_scores (benchmark 'absorption').
            Definitions: workbench/evals/absorption.py."""),
        epilog="example:\n  workbench absorption --store store/ --dict demo-topk",
    )


def add_sparse_probing(sub, name: str, help_text: str) -> None:
    from workbench.evals.probing_tasks import BUILT_IN, SAEBENCH_DATASETS
    from workbench.evals.sparse_probing import ProbingConfig, run_sparse_probing
    from workbench.models import BACKENDS

    def report(config, result) -> None:
        import pyarrow as pa

        data = {
            "task": [t.task for t in result.tasks] + ["mean"],
            "dense": [t.dense for t in result.tasks] + [result.dense],
        }
        for k in config.k:
            data[f"top-{k}"] = [t.top_k[k] for t in result.tasks] + [result.top_k[k]]
        print(f"{config.dictionary}: test accuracy of a dense probe and of probes on the top-k features")
        print_table(pa.table({key: [round(v, 3) if isinstance(v, float) else v for v in values]
                              for key, values in data.items()}))  # fmt: skip

    add_command(
        sub,
        name,
        help_text,
        ProbingConfig,
        run_sparse_probing,
        report,
        flags={"dictionary": ["--dict"]},
        choices={"backend": list(BACKENDS)},
        description=textwrap.dedent(f"""\
            Sparse probing (Gao et al., as SAEBench runs it): for each task, a dense logistic probe on the hook's
            activations against probes on the k features whose means differ most between the classes.
            Results: dictionary_scores (benchmark 'sparse_probing').

            built-in tasks (offline; text that ships with Python, see workbench/evals/probing_tasks.py):
              code_vs_prose        standard-library source against documentation (pydoc topics), 48-token chunks
              topic:NAME           one documentation topic against the others ({", ".join(BUILT_IN[1:5])})
              digit_tokens, keyword_tokens, punctuation_tokens
                                   one token's activation: digits / a Python keyword / punctuation, or not
            SAEBench's datasets by name (a network and `pip install 'workbench[hub]'`):
              {", ".join(SAEBENCH_DATASETS)}"""),
        epilog="examples:\n  workbench sparse-probing --store store/ --dict demo-topk\n"
        "  workbench sparse-probing --store store/ --dict demo-topk --tasks code_vs_prose,digit_tokens --k 1,5",
    )


def add_steer(sub, name: str, help_text: str) -> None:
    from workbench.evals.steering import MODES, SteerConfig, run_steer

    def report(config, result) -> None:
        print(f"prompt:   {config.prompt!r}")
        print(f"unsteered: {result.baseline!r}")
        print(f"steered ({config.mode} feature {config.feature} at {config.strength:g}): {result.steered!r}")

    add_command(
        sub,
        name,
        help_text,
        SteerConfig,
        run_steer,
        report,
        flags={"dictionary": ["--dict"]},
        choices={"mode": list(MODES)},
        description="Continue a prompt twice, without and with one dictionary feature steered, as Neuronpedia "
        "steers: add moves the hook's activation along the feature's decoder row; clamp holds the feature's "
        "activation at --strength and keeps the dictionary's error term, so whatever the dictionary misses is "
        "kept. A transcoder's features write into its output hook. BOS is never steered.",
        epilog="examples:\n  workbench steer --store store/ --dict demo-topk --feature 123 --strength 40 --prompt 'I think'\n"
        "  workbench steer --store store/ --dict demo-topk --feature 123 --mode clamp --strength 0   (ablate)",
    )


def add_ablate(sub, name: str, help_text: str) -> None:
    from workbench.evals.steering import AblateConfig, run_ablate

    def report(config, result) -> None:
        where = (
            f"; {result.delta_ce_where_active:+.4f} nats at the {result.n_active} predictions where it fired"
            if result.delta_ce_where_active is not None
            else "; it never fired on these tokens"
        )
        print(
            f"feature {config.feature} of {config.dictionary} zeroed on {result.n_tokens} predictions: loss "
            f"{result.ce_clean:.4f} -> {result.ce_ablated:.4f} nats ({result.delta_ce:+.5f}){where}"
        )

    add_command(
        sub,
        name,
        help_text,
        AblateConfig,
        run_ablate,
        report,
        flags={"dictionary": ["--dict"]},
        description="Zero one feature at every position (its activation clamped to 0, the dictionary's error term "
        "kept) on the dictionary's own run, and report the change in next-token loss, overall and where it fired.",
        epilog="example:\n  workbench ablate --store store/ --dict demo-topk --feature 123",
    )


def add_explain(sub, name: str, help_text: str) -> None:
    from workbench.evals.autointerp import ExplainConfig, run_explain

    def report(config, result) -> int | None:
        for r in result.explained:
            print(f"  {r.feature:>6}  detection {r.detection:.2f} (random {r.detection_random:.2f}), AUC "
                  f"{r.detection_auc:.2f} ({r.detection_auc_random:.2f})  fuzzing {r.fuzzing:.2f} "
                  f"({r.fuzzing_random:.2f}), AUC {r.fuzzing_auc:.2f} ({r.fuzzing_auc_random:.2f})  {r.explanation}")  # fmt: skip
        if result.already:
            print(f"{result.already} features already had an explanation from {config.explainer_name}; kept.")
        for feature, why in result.skipped.items():
            print(f"  skipped feature {feature}: {why}")
        s = result.summary
        if s:
            print(
                f"{config.dictionary}, all features explained by {config.explainer_name}: detection {s['detection']:.3f} "
                f"(random explanations {s['detection_random']:.3f}; AUC {s['detection_auc']:.3f} against "
                f"{s['detection_auc_random']:.3f}), fuzzing {s['fuzzing']:.3f} (random {s['fuzzing_random']:.3f}; AUC "
                f"{s['fuzzing_auc']:.3f} against {s['fuzzing_auc_random']:.3f}); 0.5 is chance for each. "
                "Table: feature_explanations."
            )
        return None

    add_command(
        sub,
        name,
        help_text,
        ExplainConfig,
        run_explain,
        report,
        flags={"dictionary": ["--dict"]},
        description=textwrap.dedent("""\
            Autointerp, as delphi does it: an LLM reads a feature's top and sampled contexts (activating tokens
            marked <<like this>>) and writes a one-line explanation; the same LLM then scores it on held-out contexts
            by detection (does this context activate the feature?) and fuzzing (are the marked tokens right?), as
            balanced accuracy (0.5 is chance), beside the scores of a random explanation. Each feature is stored in
            feature_explanations as soon as it is done: an interrupted run keeps them, and re-running the same
            command continues with the rest. The explanations show on the app's feature pages and in its search, and
            label the nodes of attribution graphs.

            The default explainer, SmolLM2-135M-Instruct, runs offline and is weak: compare its scores with the
            random baseline. Any OpenAI-compatible endpoint (vLLM, ollama, llama.cpp, a hosted API) takes its place
            with --endpoint and --model; the key comes from --key-env."""),
        epilog=textwrap.dedent("""\
            examples:
              workbench explain --store store/ --dict demo-topk --n-features 20
              workbench explain --store store/ --dict demo-topk --features 12,99 \\
                --endpoint http://localhost:8000/v1 --model meta-llama/Llama-3.1-8B-Instruct
              OPENAI_API_KEY=... workbench explain --store store/ --dict demo-topk --endpoint https://api.openai.com/v1 \\
                --model gpt-4o-mini"""),
    )


COMMANDS = {
    "explain": add_explain,
    "absorption": add_absorption,
    "sparse-probing": add_sparse_probing,
    "steer": add_steer,
    "ablate": add_ablate,
    "scores": add_scores,
}
