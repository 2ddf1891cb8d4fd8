"""The catalog's schema, its version, and the migrations between versions.

SQL users rely on these names; they are documented in store/README.md. Any change
to a table bumps SCHEMA_VERSION and adds a migration from the previous version.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from workbench.errors import StoreVersionError
from workbench.store.records import scalar

SCHEMA_VERSION = 9

TABLES_V1 = """
CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE runs (
    run VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,          -- registry name, local folder or hub id, as the user gave it
    model_dir VARCHAR,               -- the HF folder that was loaded
    backend VARCHAR NOT NULL,        -- transformerlens | nnsight
    hooks VARCHAR[] NOT NULL,        -- canonical hook names, forward order
    corpus VARCHAR NOT NULL,         -- corpus spec (default, a path, hf:NAME)
    text_column VARCHAR,
    context_len INTEGER NOT NULL,
    tokens_requested BIGINT NOT NULL,
    n_contexts INTEGER NOT NULL,
    n_tokens BIGINT NOT NULL,        -- tokens in the run's slice (n_contexts * context_len)
    chunk_contexts INTEGER NOT NULL, -- contexts per shard: the unit of commit and resume
    n_layers INTEGER NOT NULL,
    d_model INTEGER NOT NULL,
    config JSON,                     -- every harvest argument, verbatim
    package_version VARCHAR,
    git_commit VARCHAR,
    status VARCHAR NOT NULL,         -- running | complete
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE documents (
    run VARCHAR NOT NULL, doc_id INTEGER NOT NULL, source VARCHAR, text VARCHAR,
    PRIMARY KEY (run, doc_id)
);
CREATE TABLE tokens (
    run VARCHAR NOT NULL,
    token_id BIGINT NOT NULL,        -- row index within the run; activations carry the same id
    context_id INTEGER NOT NULL,
    position INTEGER NOT NULL,       -- position within the context (0 is the BOS)
    vocab_id INTEGER NOT NULL,
    token VARCHAR,                   -- the token's text, sliced from its document
    doc_id INTEGER,                  -- NULL for a BOS
    char_start INTEGER,              -- span in documents.text
    char_end INTEGER
);
CREATE TABLE hook_points (
    run VARCHAR NOT NULL, hook VARCHAR NOT NULL, layer INTEGER NOT NULL, kind VARCHAR NOT NULL,
    d INTEGER NOT NULL, dtype VARCHAR NOT NULL,
    PRIMARY KEY (run, hook)
);
CREATE TABLE shards (
    run VARCHAR NOT NULL, hook VARCHAR NOT NULL, chunk INTEGER NOT NULL,
    path VARCHAR NOT NULL,           -- relative to the store directory
    first_token BIGINT NOT NULL, n_rows INTEGER NOT NULL, n_bytes BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (run, hook, chunk)
);
"""

# v2: results of the depth-usage probes (workbench/probes), one tidy table per measurement.
PROBE_TABLES_V2 = """
CREATE TABLE probe_runs (
    probe_run VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,           -- depth | linear_maps
    model VARCHAR NOT NULL,          -- for linear_maps: the source model
    target_model VARCHAR,            -- for linear_maps
    backend VARCHAR NOT NULL,
    corpus VARCHAR NOT NULL,
    task VARCHAR NOT NULL,           -- label for depth scores (defaults to the corpus)
    n_layers INTEGER NOT NULL,
    n_tokens BIGINT NOT NULL,
    config JSON,
    package_version VARCHAR,
    git_commit VARCHAR,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE probe_sublayer (
    probe_run VARCHAR NOT NULL, layer INTEGER NOT NULL, metric VARCHAR NOT NULL,
    mean DOUBLE, max DOUBLE, n_tokens BIGINT
);
CREATE TABLE probe_skip_layers (
    probe_run VARCHAR NOT NULL, skipped_layer INTEGER NOT NULL, affected_layer INTEGER NOT NULL,
    rel_change_mean DOUBLE, rel_change_max DOUBLE, n_tokens BIGINT
);
CREATE TABLE probe_skip_output (
    probe_run VARCHAR NOT NULL, skipped_layer INTEGER NOT NULL,
    prob_l2_mean DOUBLE, prob_l2_max DOUBLE, kl_mean DOUBLE, kl_max DOUBLE,  -- at positions >= t (the paper's)
    skipped_kl_mean DOUBLE, skipped_kl_max DOUBLE,  -- at the skipped positions 1..t-1 themselves
    n_tokens BIGINT
);
CREATE TABLE probe_logit_lens (
    probe_run VARCHAR NOT NULL, layer INTEGER NOT NULL,
    kl_mean DOUBLE, kl_max DOUBLE, top5_overlap_mean DOUBLE, n_tokens BIGINT
);
CREATE TABLE probe_linear_maps (
    probe_run VARCHAR NOT NULL, source_layer INTEGER NOT NULL, target_layer INTEGER NOT NULL,
    source_rel_depth DOUBLE, target_rel_depth DOUBLE, rel_error DOUBLE, n_train BIGINT, n_test BIGINT
);
CREATE TABLE probe_depth_scores (
    probe_run VARCHAR NOT NULL, task VARCHAR NOT NULL, measure VARCHAR NOT NULL,
    depth_score DOUBLE, relative_depth_score DOUBLE
);
"""


def _add_probe_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(PROBE_TABLES_V2)


# v3: trained sparse dictionaries (workbench/train.py); files under <store>/dictionaries/<name>/.
DICTIONARY_TABLES_V3 = """
CREATE TABLE dictionaries (
    name VARCHAR PRIMARY KEY,
    arch VARCHAR NOT NULL, run VARCHAR NOT NULL, hook VARCHAR NOT NULL,
    hook_out VARCHAR,                -- transcoders: the hook they predict
    d_in INTEGER NOT NULL, d_out INTEGER NOT NULL, n_latents INTEGER NOT NULL, k INTEGER NOT NULL,
    path VARCHAR NOT NULL,           -- relative to the store
    status VARCHAR NOT NULL,         -- training | complete
    steps_done BIGINT NOT NULL, tokens_done BIGINT NOT NULL,
    train_fvu DOUBLE, train_l0 DOUBLE, dead_fraction DOUBLE, dead_window_tokens BIGINT,
    config JSON, package_version VARCHAR, git_commit VARCHAR,
    created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL
);
-- Sparse feature activations from `workbench encode`, stored sorted by (dictionary, feature,
-- value DESC) so that one feature's rows sit together and its top contexts are a short scan.
CREATE TABLE feature_acts (
    dictionary VARCHAR NOT NULL, run VARCHAR NOT NULL, token_id BIGINT NOT NULL,
    feature INTEGER NOT NULL, value FLOAT NOT NULL
);
CREATE TABLE feature_stats (
    dictionary VARCHAR NOT NULL, feature INTEGER NOT NULL,
    n_active BIGINT NOT NULL, density DOUBLE NOT NULL,   -- share of encoded tokens on which it fires
    max DOUBLE, mean DOUBLE,                             -- over the tokens where it fires
    q50 DOUBLE, q90 DOUBLE, q99 DOUBLE,
    PRIMARY KEY (dictionary, feature)
);
-- `workbench eval`: metrics as docs/ARCHITECTURE.md defines them, on an evaluation run's tokens.
CREATE TABLE dictionary_evals (
    dictionary VARCHAR NOT NULL, eval_run VARCHAR NOT NULL, backend VARCHAR NOT NULL,
    n_tokens BIGINT NOT NULL, fvu DOUBLE, l0 DOUBLE, dead_fraction DOUBLE,
    n_ce_tokens BIGINT, ce_clean DOUBLE, ce_spliced DOUBLE, ce_zero_ablation DOUBLE,
    ce_loss_score DOUBLE, delta_ce DOUBLE, kl DOUBLE,
    created_at TIMESTAMP NOT NULL
);
"""


def _add_dictionary_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DICTIONARY_TABLES_V3)


# v4: circuit analyses (workbench/circuits). One header row per analysis; activation patching's
# scores are the reference circuit the other methods are scored against.
CIRCUIT_TABLES_V4 = """
CREATE TABLE circuit_runs (
    circuit_run VARCHAR PRIMARY KEY,
    method VARCHAR NOT NULL,         -- patching | codes
    task VARCHAR NOT NULL, model VARCHAR NOT NULL, backend VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,         -- logit_diff | prob_diff
    n_pairs INTEGER NOT NULL, seq_len INTEGER NOT NULL,
    metric_clean DOUBLE, metric_corrupted DOUBLE,   -- mean over the pairs
    prompts JSON,                    -- {"pairs": [{clean, corrupted, answers, wrong}], "position_tokens": [first clean prompt]}
    wall_s DOUBLE,                   -- the analysis's own time, model loading excluded
    reference_run VARCHAR,           -- codes: the patching run scored against
    roc_auc_heads DOUBLE, roc_auc_pairs DOUBLE,     -- codes: against that reference
    config JSON, package_version VARCHAR, git_commit VARCHAR, created_at TIMESTAMP NOT NULL
);
CREATE TABLE circuit_patching (
    circuit_run VARCHAR NOT NULL,
    level VARCHAR NOT NULL,          -- layers | heads | head-positions
    layer INTEGER NOT NULL, head INTEGER, position INTEGER,   -- head NULL for layers, position NULL for heads
    metric DOUBLE,                   -- mean metric with this activation patched in
    score DOUBLE                     -- (metric - corrupted) / (clean - corrupted)
);
-- Discrete-code circuit finding: per head and per pair of heads, how many codes occur only on positive prompts.
CREATE TABLE circuit_code_heads (
    circuit_run VARCHAR NOT NULL, layer INTEGER NOT NULL, head INTEGER NOT NULL,
    unique_positive_codes INTEGER NOT NULL, in_reference BOOLEAN    -- NULL without a reference run
);
-- Attribution graphs through transcoders; the pruned graph is JSON in circuit-tracer's format at `path`.
CREATE TABLE circuit_graphs (
    graph VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, prompt VARCHAR NOT NULL,
    target_token VARCHAR, target_logit DOUBLE,
    transcoders VARCHAR[] NOT NULL,  -- dictionary names, by layer
    n_nodes INTEGER, n_edges INTEGER,            -- before pruning
    n_kept_nodes INTEGER, n_kept_edges INTEGER,  -- in the JSON
    replacement_score DOUBLE, completeness_score DOUBLE,
    node_threshold DOUBLE, edge_threshold DOUBLE,
    path VARCHAR NOT NULL,           -- relative to the store
    wall_s DOUBLE, package_version VARCHAR, git_commit VARCHAR,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE circuit_code_pairs (   -- pairs with at least one such co-occurrence
    circuit_run VARCHAR NOT NULL, layer_a INTEGER NOT NULL, head_a INTEGER NOT NULL,
    layer_b INTEGER NOT NULL, head_b INTEGER NOT NULL, unique_positive_codes INTEGER NOT NULL
);
"""


def _add_circuit_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(CIRCUIT_TABLES_V4)


# v5: codebook features (workbench/codebooks); files under <store>/codebooks/<name>/.
CODEBOOK_TABLES_V5 = """
CREATE TABLE codebooks (
    name VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL, model_fingerprint VARCHAR NOT NULL,
    sites VARCHAR[] NOT NULL,        -- blocks.{l}.attn.hook_out | blocks.{l}.mlp.hook_out
    n_codes INTEGER NOT NULL, k INTEGER NOT NULL, reduce VARCHAR NOT NULL,
    path VARCHAR NOT NULL,           -- relative to the store
    status VARCHAR NOT NULL,         -- training | complete
    steps_done BIGINT NOT NULL, tokens_done BIGINT NOT NULL,
    lm_loss_original DOUBLE,         -- held-out next-token loss of the model before fine-tuning
    lm_loss_codebooks DOUBLE,        -- the same tokens through the fine-tuned model with its codebooks
    lm_loss_increase DOUBLE,         -- codebooks - original
    lm_loss_bypassed DOUBLE,         -- the fine-tuned model with its codebooks bypassed: tells the codebooks' own cost
                                     -- (codebooks - bypassed) from what fine-tuning on the corpus gained
    recon_error DOUBLE,              -- last step's mean relative reconstruction error over the sites
    config JSON, package_version VARCHAR, git_commit VARCHAR,
    created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL
);
-- `workbench codebook encode`: the codes that fire on each token of a harvest run, one row per
-- (token, site, code); rank 0 is the code most similar to the activation.
CREATE TABLE codebook_codes (
    codebook VARCHAR NOT NULL, run VARCHAR NOT NULL, token_id BIGINT NOT NULL,
    site VARCHAR NOT NULL, rank TINYINT NOT NULL, code INTEGER NOT NULL,
    similarity FLOAT NOT NULL        -- cosine similarity of the activation to the code
);
"""


def _add_codebook_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(CODEBOOK_TABLES_V5)


# v6: where each piece of work ran and in what precision (workbench/devices.py), as resolved ("cuda:0",
# "bfloat16"; never "auto"). NULL for rows written before v6, which all ran in fp32 on a CPU.
PLACEMENT_TABLES_V6 = ("runs", "dictionaries", "dictionary_evals", "probe_runs", "circuit_runs", "circuit_graphs", "codebooks")


def _add_placement_columns(con: duckdb.DuckDBPyConnection) -> None:
    for table in PLACEMENT_TABLES_V6:
        con.execute(f"ALTER TABLE {table} ADD COLUMN device VARCHAR")
        con.execute(f"ALTER TABLE {table} ADD COLUMN dtype VARCHAR")
        con.execute(f"COMMENT ON COLUMN {table}.device IS 'compute device used: cpu, cuda:N or mps'")
        con.execute(f"COMMENT ON COLUMN {table}.dtype IS 'compute precision used: float32, bfloat16 or float16'")


# v7: feature activations grow past one table. A small encode stays rows of `feature_rows` (v3's table
# `feature_acts`, renamed); a large one is Parquet files, one per bucket of consecutive features, each sorted
# by (feature, value DESC), registered in `feature_parts` like shards. The view `feature_acts` reads both.
FEATURE_PARTS_V7 = """
ALTER TABLE feature_acts RENAME TO feature_rows;
CREATE TABLE feature_parts (
    dictionary VARCHAR NOT NULL, run VARCHAR NOT NULL,
    bucket INTEGER NOT NULL,         -- holds features bucket * bucket_width ... (bucket + 1) * bucket_width - 1
    bucket_width INTEGER NOT NULL,
    path VARCHAR NOT NULL,           -- relative to the store: features/dictionary=<name>/bucket-<b>.parquet
    n_rows BIGINT NOT NULL, n_bytes BIGINT NOT NULL, sha256 VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dictionary, bucket)
);
"""


def _add_feature_parts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(FEATURE_PARTS_V7)


# v8: attribution graphs are checked against the real model. A graph's faithfulness is the correlation of the
# target changes its edges predict with the changes that ablating its top features causes; each intervention run
# (`workbench circuit intervene`) is a row of circuit_interventions.
CIRCUIT_CHECKS_V8 = """
ALTER TABLE circuit_graphs ADD COLUMN faithfulness DOUBLE;
ALTER TABLE circuit_graphs ADD COLUMN n_targets INTEGER;
CREATE TABLE circuit_interventions (
    graph VARCHAR NOT NULL,          -- the attribution graph whose nodes were changed
    nodes VARCHAR[] NOT NULL,        -- node ids, as in the graph's JSON
    scale DOUBLE NOT NULL,           -- each feature's activation is multiplied by this (0 ablates, -1 flips)
    target VARCHAR NOT NULL,         -- the target's label
    value_before DOUBLE NOT NULL,    -- the target's value in the unchanged model
    predicted_change DOUBLE NOT NULL,  -- what the graph's direct and indirect edges predict
    actual_change DOUBLE NOT NULL,   -- what the model did with the features changed (attention and norms live)
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""


def _add_circuit_checks(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(CIRCUIT_CHECKS_V8)


# v9: evaluations beyond the core metrics (workbench/evals/). Each benchmark writes one row per dictionary, task
# and metric ("" task = the benchmark's summary); seed bands are computed from sibling dictionaries on reading.
# Autointerp writes one row per explained feature.
EVAL_TABLES_V9 = """
CREATE TABLE dictionary_scores (
    dictionary VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,      -- absorption | sparse_probing | autointerp | steering
    task VARCHAR NOT NULL,           -- '' for the benchmark's summary; else a letter, a probing task, ...
    metric VARCHAR NOT NULL,         -- e.g. absorption_rate, top_5_accuracy, detection
    value DOUBLE,
    n INTEGER,                       -- examples behind the value (test words, test examples, features)
    config JSON,                     -- the benchmark's settings, verbatim
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dictionary, benchmark, task, metric)
);
CREATE TABLE feature_explanations (
    dictionary VARCHAR NOT NULL, feature INTEGER NOT NULL,
    explanation VARCHAR NOT NULL,    -- one line
    explainer VARCHAR NOT NULL,      -- the model that wrote it: a registry name, HF folder, or endpoint model
    prompt_version VARCHAR NOT NULL, -- workbench/evals/autointerp.py PROMPT_VERSION
    scorer VARCHAR,                  -- the model that scored it
    detection DOUBLE,                -- balanced accuracy: does a held-out context activate the feature?
    fuzzing DOUBLE,                  -- balanced accuracy: are the marked tokens the activating ones?
    detection_random DOUBLE,         -- the same scores for a random explanation: the chance baseline
    fuzzing_random DOUBLE,
    detection_auc DOUBLE,            -- ROC AUC of the scorer's P("1"): threshold-free, for scorers biased to one answer
    fuzzing_auc DOUBLE,
    detection_auc_random DOUBLE, fuzzing_auc_random DOUBLE,
    n_scored INTEGER,                -- held-out contexts per score
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dictionary, feature, explainer, prompt_version)
);
"""


def _add_eval_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(EVAL_TABLES_V9)


# MIGRATIONS[v] upgrades a catalog from version v to v + 1. Each runs inside the
# caller's transaction, so a failed upgrade leaves the store as it was.
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    1: _add_probe_tables, 2: _add_dictionary_tables, 3: _add_circuit_tables, 4: _add_codebook_tables, 5: _add_placement_columns,
    6: _add_feature_parts, 7: _add_circuit_checks, 8: _add_eval_tables}


_EMPTY_ACTIVATIONS = (
    "SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS hook, NULL::BIGINT AS token_id, NULL::FLOAT[] AS act WHERE false"
)


def rebuild_activation_view(con: duckdb.DuckDBPyConnection) -> None:
    """Point the `activations` view at exactly the committed shards.

    Called inside the transaction that registers shards, so a reader sees a shard
    in SQL only once it is committed. Paths are relative to the store directory,
    which every connection opened through workbench.store sets as file_search_path
    (raw `duckdb` CLI users: start it from inside the store directory).
    """
    paths = [row[0] for row in con.execute("SELECT path FROM shards ORDER BY run, hook, chunk").fetchall()]
    if paths:
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        body = (
            # float16 shards are read as FLOAT by DuckDB; the cast keeps the view's type FLOAT[] whatever the mix.
            f"SELECT run, hook, token_id, act::FLOAT[] AS act FROM read_parquet([{files}], hive_partitioning = true, "
            "hive_types = {'run': VARCHAR, 'hook': VARCHAR})"
        )
    else:
        body = _EMPTY_ACTIVATIONS
    con.execute(f"CREATE OR REPLACE VIEW activations AS {body}")


def rebuild_feature_view(con: duckdb.DuckDBPyConnection) -> None:
    """Point the `feature_acts` view at the in-catalog rows and exactly the committed feature parts (v7+); called
    in the transaction that registers or removes parts, as the activations view is."""
    columns = "dictionary, run, token_id, feature, value"
    body = f"SELECT {columns} FROM feature_rows"
    paths = [row[0] for row in con.execute("SELECT path FROM feature_parts ORDER BY dictionary, bucket").fetchall()]
    if paths:
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        body += f" UNION ALL SELECT {columns} FROM read_parquet([{files}])"
    con.execute(f"CREATE OR REPLACE VIEW feature_acts AS {body}")


def read_version(con: duckdb.DuckDBPyConnection) -> int | None:
    exists = scalar(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_info' AND table_schema = 'main'"
    )
    if not exists:
        return None
    row = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def check_readable(version: int | None, path: str) -> None:
    if version is None:
        raise StoreVersionError(f"{path} is not a workbench catalog (it has no schema_info table).")
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"The store at {path} was written by a newer workbench (schema v{version}); this one reads up to "
            f"v{SCHEMA_VERSION}. Upgrade the workbench (pip install -U workbench, or git pull) to open it. "
            "Nothing was changed."
        )


def create_or_upgrade(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Create the v-current schema in an empty catalog, or migrate an older one, in one transaction."""
    version = read_version(con)
    if version is not None:
        check_readable(version, path)
        if version == SCHEMA_VERSION:
            return
    con.execute("BEGIN TRANSACTION")
    try:
        if version is None:
            con.execute(TABLES_V1)
            con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
            version = 1
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise StoreVersionError(f"No migration from schema v{version} of {path}; upgrade the workbench.")
            MIGRATIONS[version](con)
            version += 1
            con.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(version)])
        rebuild_activation_view(con)
        rebuild_feature_view(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
