"""Feature activations as Parquet parts (one file per bucket of features) read exactly like the catalog table."""

import pytest

from workbench.encode import EncodeConfig, run_encode
from workbench.features import top_contexts
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store, lookups
from workbench.store import features as reads
from workbench.store.sql import run_query
from workbench.train import TrainConfig, run_train

from conftest import run_cli_in_process

HOOK = "blocks.1.hook_out"


@pytest.fixture(scope="module")
def store(tmp_path_factory, models_dir) -> Store:
    root = tmp_path_factory.mktemp("parts") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(HarvestConfig(model="tiny", hooks=[HOOK], store=str(root), tokens=8192, run="h"), progress=False)
    run_train(TrainConfig(store=str(root), hook=[HOOK], k=[4], latents=[64], tokens=20_000, batch_size=512,
                          name="d"), progress=False)  # fmt: skip
    return Store.open_existing(root)


def encoded(store: Store) -> dict:
    """Everything a reader can see of dictionary d's encoding."""
    with store.reader() as con:
        rows = con.execute("SELECT run, token_id, feature, value FROM feature_acts WHERE dictionary = 'd' "
                           "ORDER BY feature, value DESC, token_id").fetchall()  # fmt: skip
        stats = con.execute("SELECT * FROM feature_stats WHERE dictionary = 'd' ORDER BY feature").fetchall()
    record = lookups.completed_dictionary(store, "d")
    per_feature = {
        f: (reads.top_hits(store, "d", f, 128, 5), reads.feature_values(store, "d", f).tolist(),
            reads.top_tokens(store, "d", f, 3).to_pylist(), [c.values for c in top_contexts(store, record, f, 3)])
        for f in (0, 17, 40, 63)
    }  # fmt: skip
    return {"rows": rows, "stats": stats, "pages": per_feature}


def test_parquet_parts_equal_the_table_and_replace_each_other_cleanly(store):
    table = run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="table"), progress=False)
    in_table = encoded(store)
    assert table.feature_store == "table" and table.n_rows == len(in_table["rows"]) > 0

    parts = run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="parquet", bucket_width=16),
                       progress=False)  # fmt: skip
    assert (parts.feature_store, parts.n_files, parts.n_rows) == ("parquet", 4, table.n_rows)
    assert encoded(store) == in_table  # the view, the stats and every feature-page read
    sandboxed = run_query(store, "SELECT count(*), sum(value) FROM feature_acts WHERE dictionary = 'd'")
    assert sandboxed.table.to_pylist()[0]["count_star()"] == table.n_rows  # `workbench sql` may read the parts
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM feature_rows WHERE dictionary = 'd'").fetchone()[0] == 0
        first = [r[0] for r in con.execute("SELECT path FROM feature_parts ORDER BY bucket").fetchall()]
    folder = store.root / "features" / "dictionary=d"
    assert sorted(p.relative_to(store.root).as_posix() for p in folder.iterdir()) == first  # no staging left

    run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="parquet", bucket_width=16),
               progress=False)  # fmt: skip
    files = sorted(p.relative_to(store.root).as_posix() for p in folder.iterdir())
    assert len(files) == 4 and not set(files) & set(first)  # a new generation; the replaced files are gone
    assert encoded(store) == in_table

    run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="table"), progress=False)
    assert not any(folder.iterdir())
    assert encoded(store) == in_table


def test_top_hits_reads_only_the_first_rows_and_still_equals_the_full_query(tmp_path):
    """A dense feature: the early-stopping read (the first rows in stored order) against the plain SQL answer."""
    import numpy as np

    from workbench.encode import feature_stats_table, rows_table

    rng = np.random.default_rng(0)
    n = 50_000  # feature 3's rows, over 2,000 contexts of 16 tokens; the page's head read covers 4,096
    tokens, values = rng.integers(0, 32_000, n), rng.exponential(1.0, n).astype(np.float32)
    features = np.full(n, 3, np.int32)
    order = np.argsort(-values, kind="stable")
    store = Store.create_or_open(tmp_path / "s")
    stats = feature_stats_table("d", features, values[order], np.arange(8, dtype=np.int32), 32_000)
    reads.replace_encoding(store, "d", stats, rows=rows_table("d", "r", tokens[order], features, values[order]))
    query = ("SELECT token_id, value FROM feature_acts WHERE dictionary = 'd' AND feature = 3 "
             "QUALIFY row_number() OVER (PARTITION BY token_id // ? ORDER BY value DESC) = 1 "
             "ORDER BY value DESC, token_id LIMIT 20")  # fmt: skip
    with store.reader() as con:
        expected, wide = (con.execute(query, [context_len]).fetchall() for context_len in (16, 16_000))
    assert len(expected) == 20 and len(wide) == 2
    assert reads.top_hits(store, "d", 3, 16, 20) == expected
    assert reads.top_hits(store, "d", 3, 16_000, 20) == wide  # 2 contexts only: the whole feature is read


def test_verify_finds_a_damaged_feature_part_and_drop_corrupt_unregisters_the_encoding(store):
    run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="parquet", bucket_width=16),
               progress=False)  # fmt: skip
    with store.reader() as con:
        path, bucket = con.execute("SELECT path, bucket FROM feature_parts ORDER BY bucket LIMIT 1 OFFSET 2").fetchone()
    damaged = bytearray((store.root / path).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (store.root / path).write_bytes(bytes(damaged))

    found = run_cli_in_process("store", "verify", str(store.root))
    assert found.returncode == 1
    assert f"DAMAGED  dictionary=d feature bucket {bucket}: {path} (checksum mismatch)" in found.stdout
    assert "1 of 4 feature parts are damaged" in found.stdout
    assert reads.is_encoded(store, "d")  # nothing changed without --drop-corrupt

    dropped = run_cli_in_process("store", "verify", str(store.root), "--drop-corrupt")
    assert dropped.returncode == 0 and "workbench encode --dict NAME" in dropped.stdout
    assert not reads.is_encoded(store, "d")
    assert not any((store.root / "features" / "dictionary=d").iterdir())
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM feature_acts WHERE dictionary = 'd'").fetchone()[0] == 0

    run_encode(EncodeConfig(store=str(store.root), dictionary="d", feature_store="parquet", bucket_width=16),
               progress=False)  # fmt: skip
    clean = run_cli_in_process("store", "verify", str(store.root))
    assert clean.returncode == 0 and "and all 4 feature parts match" in clean.stdout
