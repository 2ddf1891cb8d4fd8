"""`workbench circuit patch|codes|graph|export|intervene|deembed`: which parts of the model do a task?"""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command

PATCH_DESCRIPTION = textwrap.dedent("""\
    Run the corrupted prompts with one activation taken from the clean run, and store how much of
    the clean behaviour it restores: (metric_patched - metric_corrupted) / (metric_clean - metric_corrupted),
    1 = that activation carries the whole difference. Tables: circuit_runs, circuit_patching.
      layers          residual stream entering each block (blocks.{l}.hook_in), per position
      heads           each attention head's output (its slice of blocks.{l}.attn.hook_z), all positions
      head-positions  each head at each position (layers x heads x positions passes: slow on SmolLM2)
    Tasks: ioi (logit difference), greater-than (probability difference on one-token digits),
    or PATH.jsonl with {"clean", "corrupted", "answer", "wrong"} per line (logit difference).
""")
PATCH_EPILOG = textwrap.dedent("""\
    examples:
      workbench circuit patch --task ioi --model smollm2-135m --store store/
      workbench circuit patch --task greater-than --model smollm2-135m --store store/ --levels heads
      workbench circuit patch --task pairs.jsonl --model smollm2-135m --store store/ --levels head-positions --layers 0,1,2
""")
CODES_DESCRIPTION = textwrap.dedent("""\
    Take every attention head's write to the residual stream on the task's positive (clean) and negative
    (corrupted) prompts, train one small TopK dictionary on a few of them, turn each head output into its
    argmax code, and score each head by the codes that occur only on positives (and each pair of heads by
    such code co-occurrences). Against the newest patching run of the task (or --reference), report the
    ROC AUC and both runtimes. Tables: circuit_runs, circuit_code_heads, circuit_code_pairs.
""")
CODES_EPILOG = textwrap.dedent("""\
    examples:
      workbench circuit patch --task ioi --model smollm2-135m --store store/ --levels heads
      workbench circuit codes --task ioi --store store/
      workbench circuit codes --task greater-than --store store/ --position mean --latents 200   # the paper's settings
""")
GRAPH_DESCRIPTION = textwrap.dedent("""\
    Replace each MLP that has a transcoder by its features plus an error node, freeze attention patterns
    and norm scales on the prompt, and compute every edge exactly: source value x gradient of the target
    (a target, or an active feature's pre-activation). Edges through attention run through the frozen
    patterns. MLPs without a transcoder become error nodes. Prune by influence on the targets, report the
    replacement and completeness scores, ablate the most influential features in the real model to score the
    graph's predictions (faithfulness), and store the pruned graph under STORE/graphs/ (table circuit_graphs)
    in circuit-tracer's format; the app's Circuits page draws it, `workbench circuit export` serves it.
    Targets (one kind): the most probable tokens up to --top-p (circuit-tracer's default), --target TOKENS,
    --target ANSWER --wrong WRONG (a logit difference), or --direction V.npy (any residual-stream direction).
    A memory estimate is checked before any work.
""")
GRAPH_EPILOG = textwrap.dedent("""\
    examples:
      workbench circuit graph --prompt "When Mary and John went to the store, John gave a drink to" \\
          --transcoders all --store store/ --target " Mary" --wrong " John" --name ioi
      workbench circuit graph --prompt "The capital of France is" --transcoders tc-l4,tc-l6 --store store/
""")
EXPORT_DESCRIPTION = textwrap.dedent("""\
    Write a stored graph as circuit-tracer's frontend serves it: OUT/<graph>.json, OUT/graph-metadata.json
    (other graphs in OUT are kept and listed) and OUT/features/<transcoder>/<id>.json for every feature node,
    with top-activation contexts from the transcoder's encoding (`workbench encode`), activation quantiles,
    and the tokens its decoder most raises and lowers. Serve it with circuit-tracer:
      python -c "from circuit_tracer.frontend import serve; serve(data_dir='OUT', port=8032); input()"
    and open http://localhost:8032/index.html.
""")
INTERVENE_DESCRIPTION = textwrap.dedent("""\
    Multiply chosen features' activations by --scale (0 ablates, -1 flips, 2 doubles) at their positions in the
    real model (attention, norms and later MLPs live; the rest of each MLP's output kept), and report the first
    target's actual change against the change the graph predicts (its edges, through later features, with
    attention frozen). Stored in circuit_interventions. --generate N also continues the prompt greedily with and
    without the change.
""")
DEEMBED_DESCRIPTION = (
    "De-embeddings (Dunefsky et al.): score every vocabulary token's embedding against the feature's "
    "encoder direction, straight through the residual stream and through each attention head's OV "
    "circuit in the layers up to the transcoder's. RMSNorm gains are folded in; their per-token "
    "scale, which depends on the context, is left out."
)


def _where(score) -> str:
    return (
        f"L{score.layer}"
        + (f"H{score.head}" if score.head is not None else "")
        + (f"@{score.position}" if score.position is not None else "")
        + f" {score.score:+.2f}"
    )


def report_patch(config, result) -> None:
    run = result.circuit_run
    print(f"metric: clean {run.metric_clean:.4f}, corrupted {run.metric_corrupted:.4f}")
    for level, scores in result.levels.items():
        top = sorted(scores.scores, key=lambda s: -abs(s.score))[:5]
        print(f"{level:15s} strongest: {', '.join(_where(s) for s in top)}")
    print(
        f"Stored as '{run.circuit_run}'. For example:\n  workbench sql {config.store} \"SELECT layer, head, "
        f"round(score, 3) AS score FROM circuit_patching WHERE circuit_run = '{run.circuit_run}' AND level = 'heads' "
        'ORDER BY abs(score) DESC LIMIT 10"'
    )


def report_codes(config, result) -> None:
    import numpy as np

    run, scores = result.circuit_run, result.scores
    heads = scores.head_scores
    order = np.argsort(-heads, axis=None, kind="stable")[:8]
    print(
        "heads with the most codes unique to positives: "
        + ", ".join(f"L{i // heads.shape[1]}H{i % heads.shape[1]} {int(heads.flat[i])}" for i in order)
    )
    print(f"time: {scores.wall_s:.1f}s (forward passes, dictionary training, scoring)")
    if run.reference_run:
        print(
            f"against patching run '{run.reference_run}' (heads with |score| >= {config.reference_threshold}): "
            f"ROC AUC {run.roc_auc_heads:.3f} for heads, {run.roc_auc_pairs:.3f} for pairs of heads"
        )
        if result.reference_wall_s:
            print(
                f"that patching run took {result.reference_wall_s:.1f}s: "
                f"{result.reference_wall_s / scores.wall_s:.0f}x longer"
            )
    else:
        print("no patching run of this task to score against: run `workbench circuit patch` for ROC AUC")
    print(f"Stored as '{run.circuit_run}' (tables circuit_code_heads, circuit_code_pairs).")


def _node_label(n) -> str:
    return {
        "embedding": f"emb {n.token!r}@{n.position}",
        "error": f"L{n.layer} error@{n.position}",
        "feature": f"L{n.layer}#{n.feature}@{n.position}",
        "logit": f"logit {n.token!r}",
    }[n.kind]


def report_graph(config, result) -> None:
    from workbench.circuits.graph import greedy_paths, influence, normalised

    record, graph = result.graph, result.attribution
    features = sum(node.kind == "feature" for node in graph.nodes)
    print(f"memory estimate before building: {result.memory_estimate / 2**30:.2f} GiB")
    for target in graph.targets:
        print(f"target {target.token!r}: value {target.activation:.3f}, weight {target.weight:.3f}")
    print(f"{features} active features, {record.n_nodes} nodes, {record.n_edges} edges")
    print(f"replacement score {record.replacement_score:.3f}, completeness score {record.completeness_score:.3f}")
    if record.faithfulness is not None:
        print(
            f"faithfulness {record.faithfulness:.3f}: correlation of predicted with actual changes of the first "
            f"target when each of the {len(result.actual)} most influential features is ablated"
        )
    print(
        f"pruned to {record.n_kept_nodes} nodes and {record.n_kept_edges} links; stored as '{record.graph}'"
        + (f", JSON also at {config.json_path}" if config.json_path else "")
    )
    node_influence = influence(normalised(graph.adjacency), graph.target_weights)
    order = [i for i in node_influence.argsort()[::-1] if graph.nodes[i].kind == "feature"][:5]
    if order:
        print(
            "most influential features: "
            + ", ".join(f"{graph.nodes[i].node_id} {node_influence[i]:.3f}" for i in order)
        )
    print("strongest paths (share of the logit's input along the path):")
    for strength, path in greedy_paths(graph, 5):
        print(f"  {strength:.4f}  " + " -> ".join(_node_label(graph.nodes[i]) for i in path))


def report_export(config, result) -> None:
    print(f"wrote {result.graph_path} and {result.feature_files} feature files under {result.folder / 'features'}")
    for name in result.not_encoded:
        print(
            f"'{name}' is not encoded, so its features have logits but no example contexts: "
            f"`workbench encode --store {config.store} --dict {name}`, then export again"
        )
    print(
        f"serve it: python -c \"from circuit_tracer.frontend import serve; serve(data_dir='{result.folder}', "
        f'port=8032); input()"  and open http://localhost:8032/index.html?slug={config.graph}'
    )


def report_intervene(config, result) -> None:
    row = result.intervention
    print(f"target {row.target!r}: {row.value_before:.4f} before")
    print(f"changing {', '.join(row.nodes)} by x{row.scale:g}:")
    print(f"  actual change    {row.actual_change:+.4f}")
    print(f"  predicted change {row.predicted_change:+.4f} (graph edges, attention and norms frozen)")
    if config.generate:
        print(f"generated before: {result.generated_before!r}")
        print(f"generated after:  {result.generated_after!r}")


def _tokens(pairs) -> str:
    return ", ".join(f"{t!r} {v:+.2f}" for t, v in pairs)


def report_deembed(config, result) -> None:
    print(f"{result.dictionary} feature {result.feature} (layer {result.layer} MLP)")
    print(f"  direct:   {_tokens(result.direct)}")
    for (layer, head), pairs in result.heads:
        print(f"  L{layer}H{head}: {_tokens(pairs)}")


def add_circuit(sub, name: str, help_text: str) -> None:
    from workbench.circuits.attribution import (
        DeembedConfig,
        ExportConfig,
        GraphConfig,
        InterveneConfig,
        run_deembed,
        run_export,
        run_graph,
        run_intervene,
    )
    from workbench.circuits.codes import CodesConfig, run_codes
    from workbench.circuits.patching import PatchingConfig, run_patching
    from workbench.cli.options import comma_list_keeping_spaces
    from workbench.models import BACKENDS

    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:])
    circuit_sub = parser.add_subparsers(
        dest="circuit_command", required=True, metavar="{patch,codes,graph,export,intervene,deembed}"
    )
    backends = {"backend": list(BACKENDS)}
    add_command(
        circuit_sub,
        "patch",
        "activation patching over layers, heads and head x position: the reference circuit",
        PatchingConfig,
        run_patching,
        report_patch,
        description=PATCH_DESCRIPTION,
        epilog=PATCH_EPILOG,
        choices=backends,
    )
    add_command(
        circuit_sub,
        "codes",
        "find a task's circuit from discrete SAE codes of head outputs (O'Neill & Bui), scored against patching",
        CodesConfig,
        run_codes,
        report_codes,
        description=CODES_DESCRIPTION,
        epilog=CODES_EPILOG,
        choices=backends | {"position": ["last", "mean"]},
    )
    add_command(
        circuit_sub,
        "graph",
        "an attribution graph of one prompt through transcoders",
        GraphConfig,
        run_graph,
        report_graph,
        description=GRAPH_DESCRIPTION,
        epilog=GRAPH_EPILOG,
        flags={"json_path": ["--json"]},
        parsers={"target": comma_list_keeping_spaces},
    )
    add_command(
        circuit_sub,
        "export",
        "write a stored graph, its feature files and graph-metadata.json for circuit-tracer's server",
        ExportConfig,
        run_export,
        report_export,
        description=EXPORT_DESCRIPTION,
        epilog="example:\n  workbench circuit export ioi --out served/ --store store/",
        flags={"graph": ["GRAPH"]},
    )
    add_command(
        circuit_sub,
        "intervene",
        "ablate or steer a graph's features in the real model: actual against predicted change of the target",
        InterveneConfig,
        run_intervene,
        report_intervene,
        description=INTERVENE_DESCRIPTION,
        flags={"nodes": ["--nodes", "--node"]},
        epilog="examples:\n  workbench circuit intervene --graph ioi --nodes 5_1234_14 --scale 0 --store store/\n"
        "  workbench circuit intervene --graph ioi --nodes 5_1234_14,7_99_14 --scale 3 --generate 10 --store store/",
    )
    add_command(
        circuit_sub,
        "deembed",
        "the tokens that most drive a transcoder feature, directly and through each attention head",
        DeembedConfig,
        run_deembed,
        report_deembed,
        description=DEEMBED_DESCRIPTION,
        epilog="example:\n  workbench circuit deembed --store store/ --dict tc-l6 --feature 123 --heads 5",
        flags={"dictionary": ["--dict"]},
    )


COMMANDS = {"circuit": add_circuit}
