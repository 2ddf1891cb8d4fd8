"""The record layer: each record mirrors its table column for column, and round-trips through a real catalog."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.errors import DictionaryError, StoreError
from workbench.store import Store, lookups, records
from workbench.store.records import DictionaryRecord, HookPointRecord, RunRecord

RECORD_TYPES = [
    records.RunRecord,
    records.HookPointRecord,
    records.ShardRecord,
    records.FeaturePartRecord,
    records.DictionaryRecord,
    records.DictionaryEvalRecord,
    records.ProbeRunRecord,
    records.CircuitRunRecord,
    records.GraphRecord,
    records.ScoreRecord,
    records.ExplanationRecord,
    records.CodebookRecord,
]


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda cls: cls.__name__)
def test_record_fields_are_the_table_columns_in_order(tmp_path, cls):
    store = Store.create_or_open(tmp_path / "s")
    with store.reader() as con:
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [cls.TABLE],
            ).fetchall()
        ]
    assert [f.name for f in dataclasses.fields(cls)] == columns
    assert set(cls.KEY) <= set(columns)


def _run(name: str, hooks: list[str]) -> RunRecord:
    return RunRecord(
        run=name,
        model="tiny",
        model_dir=None,
        backend="nnsight",
        hooks=hooks,
        corpus="default",
        text_column="text",
        context_len=8,
        tokens_requested=64,
        n_contexts=8,
        n_tokens=64,
        chunk_contexts=4,
        n_layers=2,
        d_model=64,
        config={"tokens": 64, "hooks": hooks},
    )


def test_records_round_trip_and_lookups_answer(tmp_path):
    store = Store.create_or_open(tmp_path / "s")
    with store.transaction() as con:
        for name in ("a", "b"):
            records.insert(con, _run(name, ["blocks.1.hook_out"]))
            records.insert(con, HookPointRecord(name, "blocks.1.hook_out", 1, "resid_post", 64))
        records.insert(con, HookPointRecord("a", "blocks.0.hook_out", 0, "resid_post", 64))
        records.insert(
            con,
            DictionaryRecord(
                "d", "topk", "a", "blocks.0.hook_out", None, 64, 64, 256, 8, "dictionaries/d", config={"k": 8}
            ),
        )
    read = lookups.run(store, "a")
    assert read.config == {"tokens": 64, "hooks": ["blocks.1.hook_out"]} and read.hooks == ["blocks.1.hook_out"]
    assert read.created_at is not None and read.status == "running"
    with pytest.raises(StoreError, match="No run 'c'.*Known: a, b"):
        lookups.run(store, "c")
    assert lookups.run_with_hook(store, "blocks.0.hook_out") == "a"
    with pytest.raises(DictionaryError, match=r"Several runs have hook 'blocks.1.hook_out' \(a, b\)"):
        lookups.run_with_hook(store, "blocks.1.hook_out")
    assert lookups.hook_widths(store, "a") == {"blocks.0.hook_out": 64, "blocks.1.hook_out": 64}
    with pytest.raises(DictionaryError, match="still training"):
        lookups.completed_dictionary(store, "d")
    with store.transaction() as con:
        records.update(con, DictionaryRecord, {"name": "d"}, status="complete", train_fvu=0.25)
    done = lookups.completed_dictionary(store, "d")
    assert (done.status, done.train_fvu, done.config) == ("complete", 0.25, {"k": 8})
    assert done.updated_at >= done.created_at
    with pytest.raises(DictionaryError, match="No dictionary 'x'.*Known: d"):
        lookups.completed_dictionary(store, "x")
    with pytest.raises(ValueError, match="no column"):
        with store.transaction() as con:
            records.update(con, DictionaryRecord, {"name": "d"}, not_a_column=1)


def test_weights_stamp_changes_when_a_dictionary_is_saved_again(tmp_path):
    """The app keeps a loaded dictionary while this stamp stays the same, so a resumed run's new weights must move it."""
    import os

    from workbench.dictionaries import DictionaryConfig, make_dictionary
    from workbench.store import results

    store = Store.create_or_open(tmp_path / "s")
    with store.transaction() as con:
        records.insert(con, _run("a", ["blocks.0.hook_out"]))
        records.insert(
            con, DictionaryRecord("d", "topk", "a", "blocks.0.hook_out", None, 8, 8, 16, 2, "dictionaries/d")
        )
    assert results.dictionary_weights_stamp(store, "d") == 0  # registered, nothing saved yet
    model = make_dictionary(DictionaryConfig(arch="topk", d_in=8, n_latents=16, k=2))
    model.save(store.root / "dictionaries" / "d")
    weights = next((store.root / "dictionaries" / "d").glob("*.safetensors"))
    saved = weights.stat().st_mtime_ns - 10**9
    os.utime(weights, ns=(saved, saved))  # as if saved a second ago, so that the next save is surely later
    first = results.dictionary_weights_stamp(store, "d")
    assert first == saved and results.dictionary_weights_stamp(store, "d") == first  # stable while nothing changes
    model.save(store.root / "dictionaries" / "d")  # what a resumed training run does
    assert results.dictionary_weights_stamp(store, "d") > first
