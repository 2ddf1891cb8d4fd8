"""`workbench train|eval|encode|import`: sparse dictionaries on stored activations."""

from __future__ import annotations

import textwrap

from workbench.cli.common import add_command

TRAIN_DESCRIPTION = textwrap.dedent("""\
    Train a sparse dictionary on a store's activations and register it in the `dictionaries` table.
    Batches are shuffled across shards without loading the store into memory; BOS positions are left out.
    A checkpoint is written every --checkpoint-seconds: after an interruption (even kill -9), run the
    same command again and it resumes exactly. Files: <store>/dictionaries/<name>/ (cfg.json and
    sae_weights.safetensors, SAELens's layout: sae_lens.SAE.load_from_disk opens topk, the JumpReLU families
    and their transcoders).

    families:
      topk          k latents per token; AuxK for dead latents
      batchtopk     k per token on average over a batch; JumpReLU threshold at inference
      matryoshka    batchtopk with nested prefixes that must each reconstruct
      mutualchoice  batch-wide top k*batch, with aux_zipf_loss for under-used latents
      featurechoice each latent takes its k*batch/latents strongest tokens; aux_zipf_loss
      topafa        per token, latents until their norm matches the input's (k is a ceiling)
      mp            matching pursuit, k greedy steps over a tied dictionary
      transcoder    shorthand for batchtopk with --out (SAELens: jumprelu_transcoder)
    Any family except mp and topafa becomes a transcoder with --out.
""")
TRAIN_EPILOG = textwrap.dedent("""\
    examples:
      workbench train --store store/ --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 --tokens 2M
      workbench train --store store/ --arch transcoder --in blocks.6.mlp.hook_in --out blocks.6.mlp.hook_out --k 32
    several dictionaries from one read of the data (one per hook x k x latents; each resumes on its own):
      workbench train --store store/ --hook blocks.2.hook_out,blocks.6.hook_out --k 16,32,64 --latents 4608,9216
      workbench train --store store/ --arch transcoder --in blocks.5.mlp.hook_in,blocks.6.mlp.hook_in \\
        --out blocks.5.mlp.hook_out,blocks.6.mlp.hook_out
    streaming, for runs too big to store (live activations; one forward pass feeds every hook; resumable):
      workbench train --store store/ --model smollm2-135m --corpus default --hook blocks.6.hook_out --tokens 2M
    on a GPU (the default --device auto picks it; --dtype auto trains the matrix products in bfloat16):
      workbench train --store store/ --hook blocks.6.hook_out --device cuda:0 --batch-size 8192 --tokens 200M
    on several GPUs or machines (torchrun; --batch-size is the global batch, split over the processes; the
    result equals one process's to float tolerance; rank 0 writes; re-run the same command to resume):
      torchrun --nproc-per-node 8 -m workbench train --store store/ --hook blocks.6.hook_out --tokens 1B
      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 -m workbench train ...   (on each node)
      torchrun --nproc-per-node 4 -m workbench train --store store/ --hook blocks.2.hook_out,blocks.6.hook_out \
        --k 16,32 --distribute-dictionaries   (each process trains its own dictionaries of the sweep)
""")
HOOK_FLAGS = {"hook": ["--hook", "--in"], "hook_out": ["--out"]}


def add_train(sub, name: str, help_text: str) -> None:
    from workbench.dictionaries.base import families
    from workbench.train import TrainConfig, run_train

    def report(config, result) -> None:
        from workbench.distributed import ranks_from_environment

        if not ranks_from_environment().is_main:  # under torchrun, rank 0 speaks for all
            return
        names = ", ".join(f"'{d.name}'" for d in result.dictionaries)
        trained = f"Dictionary {names} is" if len(result.dictionaries) == 1 else f"Dictionaries {names} are"
        where = f" on {result.dictionaries[0].device} ({result.dictionaries[0].dtype})" if result.dictionaries else ""
        waited = (
            f"; the loop waited for data {100 * result.data_wait_share:.1f}% of its time"
            if result.data_wait_share is not None
            else ""
        )
        print(
            f"{trained} trained{where}{waited}. See:\n"
            f'  workbench sql {config.store} "SELECT name, arch, k, n_latents, train_fvu, train_l0, dead_fraction '
            'FROM dictionaries"'
        )

    add_command(
        sub,
        name,
        help_text,
        TrainConfig,
        run_train,
        report,
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG,
        flags=HOOK_FLAGS,
        choices={"arch": [*families(trainable=True), "transcoder"]},
        # These shared options mean something else here: they select streaming training.
        helps={
            "model": "streaming: train on live activations of this model (registry name, HF folder or hub id) "
            "instead of the store's shards; only the dictionaries and the corpus slice's tokens are stored",
            "corpus": "streaming: the corpus, as for harvest",
            "backend": "streaming: the hooking library (nnsight or transformerlens)",
            "text_column": "streaming: text field for .jsonl/.parquet/hf corpora",
        },
    )


ENCODE_EPILOG = textwrap.dedent("""\
    example, then a feature's top contexts:
      workbench encode --store store/ --dict topk-blocks.6.hook_out-k32-4608
      workbench sql store/ "SELECT f.value, t.context_id, t.position, t.token FROM feature_acts f
                            JOIN tokens t USING (run, token_id)
                            WHERE f.dictionary = 'topk-blocks.6.hook_out-k32-4608' AND f.feature = 7
                            ORDER BY f.value DESC LIMIT 20"
    a big run, as Parquet files written by a local Ray cluster's 4 actors (this process alone commits):
      workbench encode --store store/ --dict topk-blocks.6.hook_out-k32-4608 --feature-store parquet --ray --workers 4
""")


def add_encode(sub, name: str, help_text: str) -> None:
    from workbench.encode import EncodeConfig, run_encode

    def report(config, result) -> None:
        where = (
            f"in {result.n_files} Parquet files under {config.store}/features/"
            if result.feature_store == "parquet"
            else "in the catalog"
        )
        print(
            f"Encoded {result.n_tokens} tokens with '{config.dictionary}': {result.n_rows} non-zero activations "
            f"({result.n_rows / max(result.n_tokens, 1):.1f} per token) {where}, read through the feature_acts view; "
            "statistics in feature_stats."
        )

    add_command(
        sub,
        name,
        help_text,
        EncodeConfig,
        run_encode,
        report,
        flags={"dictionary": ["--dict"]},
        choices={"feature_store": ["auto", "table", "parquet"]},
        bare={"ray": "local"},
        description="Encode the dictionary's run with it and store every non-zero (token_id, feature, value), "
        "sorted by feature, plus density, max, mean and quantiles per feature in `feature_stats`. Small runs go "
        "into the catalog, large ones (--feature-store parquet, or auto from 50M rows) into one Parquet file per "
        "bucket of features; the `feature_acts` view reads both. BOS positions are left out. Re-encoding "
        "replaces the dictionary's rows.",
        epilog=ENCODE_EPILOG,
    )


def add_eval(sub, name: str, help_text: str) -> None:
    from workbench.cli.evals import print_scores
    from workbench.evals.suite import EvalSuiteConfig, run_eval_suite
    from workbench.models import BACKENDS

    def report(config, result) -> None:
        for r in result.evaluations:
            print(
                f"{r.dictionary} on run '{r.eval_run}' ({r.n_tokens} tokens; CE on {r.n_ce_tokens}):\n"
                f"  FVU {r.fvu:.4f}   L0 {r.l0:.2f}   dead {100 * r.dead_fraction:.1f}%\n"
                f"  CE clean {r.ce_clean:.4f}, spliced {r.ce_spliced:.4f}, zero-ablated {r.ce_zero_ablation:.4f} nats\n"
                f"  CE-loss score {r.ce_loss_score:.4f}   delta CE {r.delta_ce:+.4f} nats   KL {r.kl:.4f}"
            )
            if abs(r.ce_zero_ablation - r.ce_clean) < 0.01:
                print(
                    "  note: zero-ablating this hook barely changes the loss (< 0.01 nats), so the CE-loss score is not "
                    "meaningful here; read delta CE and KL instead."
                )
        print_scores(result.table)

    add_command(
        sub,
        name,
        help_text,
        EvalSuiteConfig,
        run_eval_suite,
        report,
        flags={"dictionary": ["--dict"]},
        choices={"backend": list(BACKENDS)},
        description="Evaluate a dictionary, then show every dictionary's evaluations side by side. The core "
        "metrics: a run's stored activations (FVU against the per-dimension mean, L0, dead latents) and the "
        "reconstruction spliced into the model (CE-loss score, delta CE, KL), in the dictionary_evals table. "
        "--benchmarks adds absorption and sparse probing (dictionary_scores); --seeds N trains N - 1 seed siblings "
        "and reports mean ± std. Definitions: README and docs/ARCHITECTURE.md.",
        epilog="examples:\n  workbench eval --store store/ --dict demo-topk\n"
        "  workbench eval --store store/ --dict demo-topk --run held-out --ce-tokens 8192\n"
        "  workbench eval --store store/ --dict demo-topk --benchmarks all --seeds 3",
    )


IMPORT_DESCRIPTION = textwrap.dedent("""\
    Import dictionaries trained elsewhere, converted exactly, checked against the width of the hook they
    are for, and registered so that eval and encode use them. Nothing is written unless every check passes.

    SOURCE is one of:
      a folder             any format below, told from its files
      RELEASE/ID           a SAELens release and SAE id (`sae_lens` pretrained directory, resolved offline);
                           the release ends at the first '/', so ids may contain '/'
      hf://OWNER/REPO/PATH a folder of a Hugging Face repo (add ?revision=REV for a branch or commit)
    Named sources are read from the Hugging Face cache when there, else downloaded; offline, the error
    says how to fetch them elsewhere (huggingface-cli download ...) and import the copied folder.
    --hook and --out default to the hooks the files (or SAELens's directory) name.

    formats:
      SAELens         cfg.json + sae_weights.safetensors: topk, standard (ReLU), jumprelu and the
                      transcoder variants; expected_average_only_in and covariance_whitening are folded
                      into the weights, hook_z SAEs go on blocks.L.attn.hook_z; layer_norm and
                      constant_norm_rescale (per-input rescaling) are refused
      Gemma Scope     params.npz (a transcoder when --out is given or its repo is a transcoder repo)
      Gemma Scope 2   params.safetensors + config.json (SAEs, transcoders, affine skip transcoders)
      circuit-tracer  config.yaml + one file per layer: a transcoder set, one transcoder per layer,
                      named <name>-L<layer>, between the hooks its config names (feature_input_hook and
                      feature_output_hook: blocks.L.mlp.hook_in to blocks.L.mlp.hook_out)
""")
IMPORT_EPILOG = textwrap.dedent("""\
    examples:
      workbench import ~/saes/l6_topk --store store/ --hook blocks.6.hook_resid_post
      workbench import gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium --store store/
      workbench import gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76 --store store/
      workbench import hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71 --store store/
    a circuit-tracer transcoder set (a folder, or hf://OWNER/REPO), two of its layers, named tc-L0 and tc-L1:
      workbench import ~/sets/my-transcoders --store store/ --layers 0,1 --name tc
    offline, fetch on a machine with network, copy DIR here, and import the folder:
      huggingface-cli download google/gemma-scope-2b-pt-res --include 'layer_20/width_16k/average_l0_71/*' \\
        --local-dir DIR
      workbench import DIR/layer_20/width_16k/average_l0_71 --store store/ --hook blocks.20.hook_resid_post
""")


def add_import(sub, name: str, help_text: str) -> None:
    from workbench.import_sae import ImportConfig, run_import

    def report(config, result) -> None:
        names = [d.name for d in result.dictionaries]
        imported = f"'{names[0]}'" if len(names) == 1 else f"{len(names)} transcoders ({', '.join(names)})"
        print(
            f"Imported {imported} ({result.format} files from {result.folder}). Next:\n"
            f"  workbench eval --store {config.store} --dict {names[0]}\n"
            f"  workbench encode --store {config.store} --dict {names[0]}"
        )

    add_command(
        sub,
        name,
        help_text,
        ImportConfig,
        run_import,
        report,
        flags=HOOK_FLAGS | {"source": ["SOURCE"]},
        description=IMPORT_DESCRIPTION,
        epilog=IMPORT_EPILOG,
    )


def add_export(sub, name: str, help_text: str) -> None:
    from workbench.export_dictionaries import CircuitTracerExportConfig, run_export_circuit_tracer

    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:])
    formats = parser.add_subparsers(dest="export_format", required=True, metavar="{circuit-tracer,neuronpedia}")

    def report(config, result) -> None:
        print(
            f"wrote a circuit-tracer {result.kind} ({result.layers} layers) to {result.folder}: "
            f"{', '.join(result.files[:4])}{' ...' if len(result.files) > 4 else ''}"
        )
        print("load it in circuit-tracer with its loaders (load_transcoder_set / load_clt) on the files, or "
              f"import it back: workbench import {result.folder} --store STORE")  # fmt: skip

    add_command(
        formats,
        "circuit-tracer",
        "transcoders in circuit-tracer's formats: a per-layer set (config.yaml + layer_i.safetensors) or a CLT",
        CircuitTracerExportConfig,
        run_export_circuit_tracer,
        report,
        flags={"dictionaries": ["--dict", "--dicts"]},
        epilog="examples:\n  workbench export circuit-tracer --store store/ --dict all --out tc-set/\n"
        "  workbench export circuit-tracer --store store/ --dict clt-layers0-29 --out clt/",
    )
    add_export_neuronpedia(formats)


NEURONPEDIA_EPILOG = textwrap.dedent("""\
    example, then the upload with Neuronpedia's own client (pip install neuronpedia; NEURONPEDIA_API_KEY set; the
    model and the source must exist on Neuronpedia):
      workbench export neuronpedia --store store/ --dict demo-topk --out np/
      python -c "
      import json, glob; from pydantic import TypeAdapter
      from neuronpedia.np_feature import Feature; from neuronpedia.requests.feature_request import FeatureRequest
      for path in sorted(glob.glob('np/batch-*.json')):
          batch = json.load(open(path))
          features = [TypeAdapter(Feature).validate_python(f) for f in batch['features']]
          FeatureRequest().upload_batch(batch['modelId'], batch['source'], features)"
""")


def add_export_neuronpedia(formats) -> None:
    from workbench.evals.neuronpedia import NeuronpediaExportConfig, run_export_neuronpedia

    def report(config, result) -> None:
        print(
            f"wrote {result.n_features} features of '{config.dictionary}' as Neuronpedia's upload batches "
            f"(modelId '{result.model_id}', source '{result.source}') to {result.folder}: "
            f"{', '.join(result.files[:4])}{' ...' if len(result.files) > 4 else ''}"
        )

    add_command(
        formats,
        "neuronpedia",
        "features in Neuronpedia's upload format: density, logits, activation windows, explanations",
        NeuronpediaExportConfig,
        run_export_neuronpedia,
        report,
        flags={"dictionary": ["--dict"]},
        epilog=NEURONPEDIA_EPILOG,
    )


COMMANDS = {"train": add_train, "eval": add_eval, "encode": add_encode, "import": add_import, "export": add_export}
