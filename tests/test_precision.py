"""Devices and precisions: one resolver, half-precision models and shards, and their refusals.

Everything runs on the CPU; the CUDA-only paths have their own tests that say they are skipped without a GPU.
"""

import numpy as np
import pytest
import torch

from workbench.devices import DeviceError, resolve_placement
from workbench.errors import RunConflictError, StoreError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.hooks import parse_hooks
from workbench.models import load_hf_model, make_backend
from workbench.store import Store
from workbench.store.records import HookPointRecord, RunRecord, read_all, read_one
from workbench.store.sql import run_query
from workbench.train import TrainConfig, run_train

from conftest import planted_data, run_cli_in_process, store_snapshot

HOOKS = ["blocks.1.hook_out", "blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out"]
NO_CUDA = not torch.cuda.is_available()

# Relative error ||x_half - x_fp32|| / ||x_fp32|| of the tiny model's activations, measured 0.005-0.011 (bf16, 8
# bits of mantissa) and 0.0007-0.0014 (fp16, 11 bits); the bounds leave 2x room and fail on a wrong dtype path.
TOLERANCE = {"bfloat16": 0.02, "float16": 0.003}


def _harvest(store_dir, run, **overrides):
    settings = dict(
        model="tiny", hooks=HOOKS, store=str(store_dir), tokens=1024, context_len=64, batch_size=4, chunk_contexts=8
    )
    return run_harvest(HarvestConfig(**(settings | {"run": run} | overrides)), progress=False)


def test_auto_resolves_to_what_this_machine_has():
    placement = resolve_placement("auto", "auto")
    if NO_CUDA:
        assert (placement.device_name, placement.dtype_name) == ("cpu", "float32")
    else:
        assert (placement.device.type, placement.dtype_name) == ("cuda", "bfloat16")
    assert resolve_placement("cpu", "bf16").dtype == torch.bfloat16  # the short spellings too


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_devices_that_exist():
    with pytest.raises(DeviceError, match=r"no CUDA GPU is visible.*Devices here: cpu"):
        resolve_placement("cuda", "auto")
    result = run_cli_in_process("train", "--store", "nowhere", "--hook", "blocks.0.hook_out", "--device", "cuda:1")
    assert result.returncode == 2 and "Devices here: cpu" in result.stderr


def test_unknown_devices_and_dtypes_are_refused():
    with pytest.raises(DeviceError, match="Unknown device 'gpu'"):
        resolve_placement("gpu", "auto")
    with pytest.raises(DeviceError, match="Unknown dtype 'float8'"):
        resolve_placement("cpu", "float8")


@pytest.mark.parametrize("backend", ["nnsight", "transformerlens"])
def test_half_precision_models_agree_with_fp32_through_both_backends(tiny_dir, backend):
    ids = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    hooks = parse_hooks(HOOKS, 2)
    hf_model, tokenizer = load_hf_model(tiny_dir)
    reference = make_backend(backend, hf_model, tokenizer).capture(ids, hooks)
    for dtype, tolerance in TOLERANCE.items():
        placement = resolve_placement("cpu", dtype)
        hf_model, tokenizer = load_hf_model(tiny_dir, placement)
        captured = make_backend(backend, hf_model, tokenizer).capture(ids, hooks)
        for hook in hooks:
            assert captured[hook].dtype == placement.dtype  # hooks read the model's own dtype
            error = (captured[hook].float() - reference[hook]).norm() / reference[hook].norm()
            assert error < tolerance, (dtype, hook.name, float(error))
            assert error > 0  # it really ran in half precision


@pytest.mark.parametrize("store_dtype", ["bfloat16", "float16"])
def test_half_precision_shards_round_trip_and_sql_reads_them_as_float(store_dir, store_dtype):
    _harvest(store_dir, "full")
    _harvest(store_dir, "half", store_dtype=store_dtype)  # a second precision in the same store
    store = Store.open_existing(store_dir)
    rounding = {"bfloat16": torch.bfloat16, "float16": torch.float16}[store_dtype]
    full_bytes = half_bytes = 0
    for hook in HOOKS:
        full = np.concatenate([a for _, a in store.iter_activations("full", hook)])
        half = np.concatenate([a for _, a in store.iter_activations("half", hook)])
        assert half.dtype == np.float32  # iter_activations hands out fp32 whatever is stored
        # The same fp32 forward pass, rounded once: exactly torch's rounding of the fp32 harvest.
        np.testing.assert_array_equal(half, torch.from_numpy(full).to(rounding).float().numpy())
        full_bytes += sum(s.n_bytes for s in store.shards("full", hook))
        half_bytes += sum(s.n_bytes for s in store.shards("half", hook))
    assert half_bytes < 0.62 * full_bytes, half_bytes / full_bytes  # measured 0.42x (bf16), 0.52x (fp16) at d=576

    table = run_query(
        store,
        "SELECT run, typeof(act) AS type, act FROM activations WHERE hook = 'blocks.1.hook_out' AND token_id = 5 "
        "ORDER BY run",
    )
    rows = table.table.to_pylist()
    assert [(r["run"], r["type"]) for r in rows] == [("full", "FLOAT[]"), ("half", "FLOAT[]")]
    expected = torch.tensor(rows[0]["act"]).to(rounding).float().tolist()
    assert rows[1]["act"] == pytest.approx(expected, abs=0)
    # Another engine reads the same files, Hive-partitioned, without the catalog: Polars (Float16 upcast to the
    # first file's Float32; the store's two runs have different precisions).
    import polars as pl

    frame = (
        pl.scan_parquet(
            store_dir / "shards" / "**" / "*.parquet",
            hive_partitioning=True,
            cast_options=pl.ScanCastOptions(float_cast="upcast"),  # float16 and float32 shards in one scan
        )
        .filter((pl.col("hook") == "blocks.1.hook_out") & (pl.col("token_id") == 5))
        .sort("run")
        .collect()
    )
    assert frame["run"].to_list() == ["full", "half"]
    assert [[float(v) for v in row] for row in frame["act"].to_list()] == [r["act"] for r in rows]
    with store.reader() as con:
        assert {p.dtype for p in read_all(con, HookPointRecord, run="half")} == {store_dtype}
        run = read_one(con, RunRecord, run="half")
    assert run is not None and (run.device, run.dtype) == ("cpu", "float32")  # resolved, never "auto"


def test_a_run_keeps_its_store_dtype_and_model_dtype_on_resume(store_dir):
    _harvest(store_dir, "r", store_dtype="float16", tokens=512)
    before = store_snapshot(store_dir)
    with pytest.raises(
        RunConflictError, match=r"store dtype: its shards are float16, now bfloat16 \(give --store-dtype"
    ):
        _harvest(store_dir, "r", store_dtype="bfloat16", tokens=512)
    with pytest.raises(
        RunConflictError, match=r"model dtype: it ran in float32, now bfloat16 \(give --dtype float32\)"
    ):
        _harvest(store_dir, "r", store_dtype="float16", tokens=512, dtype="bfloat16")
    assert store_snapshot(store_dir) == before


def test_float16_overflow_is_refused_before_anything_is_stored():
    from workbench.store.shards import to_store_dtype

    with pytest.raises(StoreError, match="does not fit in float16.*--store-dtype bfloat16"):
        to_store_dtype(torch.tensor([[1.0, 70000.0]]), "float16")
    assert to_store_dtype(torch.tensor([[1.0, 70000.0]]), "bfloat16").tolist() == [[1.0, 70144.0]]


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (skipped on this machine: torch.cuda.is_available() is False)")
def test_cuda_model_in_bfloat16_agrees_with_the_cpu(tiny_dir):
    ids = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    hooks = parse_hooks(HOOKS, 2)
    hf_model, tokenizer = load_hf_model(tiny_dir)
    reference = make_backend("nnsight", hf_model, tokenizer).capture(ids, hooks)
    placement = resolve_placement("cuda", "auto")
    hf_model, tokenizer = load_hf_model(tiny_dir, placement)
    captured = make_backend("nnsight", hf_model, tokenizer).capture(ids.to(placement.device), hooks)
    for hook in hooks:
        assert captured[hook].device.type == "cuda" and captured[hook].dtype == torch.bfloat16
        error = (captured[hook].float().cpu() - reference[hook]).norm() / reference[hook].norm()
        assert error < TOLERANCE["bfloat16"]


def test_shards_encoded_on_threads_are_byte_identical_to_inline_ones(store_dir):
    """The GPU default (a thread per hook encodes while the forward pass runs on) changes no byte of a shard."""
    _harvest(store_dir, "inline", encode_threads=0, store_dtype="bfloat16")
    _harvest(store_dir, "threaded", encode_threads=1, store_dtype="bfloat16")
    store = Store.open_existing(store_dir)
    for hook in HOOKS:
        inline, threaded = store.shards("inline", hook), store.shards("threaded", hook)
        assert len(inline) == 2 and [s.sha256 for s in inline] == [s.sha256 for s in threaded]


def test_auto_store_dtype_follows_a_half_precision_model(store_dir):
    _harvest(store_dir, "bf16", dtype="bfloat16", tokens=512)  # store_dtype auto
    store = Store.open_existing(store_dir)
    with store.reader() as con:
        assert {p.dtype for p in read_all(con, HookPointRecord, run="bf16")} == {"bfloat16"}
    _harvest(store_dir, "bf16", dtype="bfloat16", tokens=512)  # resumes (complete) with the same resolution


def test_out_of_memory_names_the_batch_size_to_try_and_the_same_command_resumes(store_dir, monkeypatch):
    """A device that runs out of memory mid-harvest (simulated: the capture raises torch's OutOfMemoryError, as
    CUDA does): the message gives the batch size to try, committed chunks stay, and the command resumes."""
    import workbench.harvest as harvest_module

    real_make_backend = harvest_module.make_backend
    calls = {"n": 0}

    def failing_backend(*args, **kwargs):
        backend = real_make_backend(*args, **kwargs)
        capture = backend.capture

        def capture_until_full(*a, **k):
            calls["n"] += 1
            if calls["n"] == 5:  # the third chunk's first batch (two batches of 4 contexts per chunk)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return capture(*a, **k)

        backend.capture = capture_until_full
        return backend

    monkeypatch.setattr(harvest_module, "make_backend", failing_backend)
    with pytest.raises(DeviceError, match=r"ran out of memory on cpu at a batch of 4\. Try --batch-size 2"):
        _harvest(store_dir, "oom", tokens=2048)
    store = Store.open_existing(store_dir)
    assert [s.chunk for s in store.shards("oom", HOOKS[0])] == [0, 1]  # what was committed is kept
    monkeypatch.setattr(harvest_module, "make_backend", real_make_backend)
    result = _harvest(store_dir, "oom", tokens=2048)
    assert result.chunks_resumed_from == 2 and [s.chunk for s in store.shards("oom", HOOKS[0])] == [0, 1, 2, 3]


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (skipped on this machine: torch.cuda.is_available() is False)")
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_sparse_kernels_train_on_cuda_as_on_the_cpu(arch):
    """The sparse training kernels (embedding_bag, CSR products) on CUDA: the same batches give the same FVU."""
    from workbench.dictionaries import DictionaryConfig, make_dictionary
    from workbench.dictionaries.fit import fit

    _, planted = planted_data(d=32)

    def batches_from(step):
        return planted(step, batch=512)

    fvus = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = make_dictionary(DictionaryConfig(arch=arch, d_in=32, n_latents=256, k=4)).to(device)
        state, tracker = fit(model, batches_from, 60, 4e-3, 100_000, progress=False)
        assert tracker.tokens_since_fired.device.type == device
        fvus.append(state.last_fvu)
    assert abs(fvus[0] - fvus[1]) < 0.02, fvus


def test_every_model_backed_command_runs_in_bfloat16_and_records_it(store_dir):
    """Depth probes, linear maps, eval, encode, and codebook train/encode in bf16 on the CPU: each runs through
    (the model, its hooks and the metrics meet in one dtype or in fp32), and the catalog says bfloat16."""
    from workbench.codebooks.finetune import FinetuneSettings
    from workbench.codebooks.train import (
        CodebookEncodeConfig,
        CodebookTrainConfig,
        run_codebook_encode,
        run_codebook_train,
    )
    from workbench.encode import EncodeConfig, run_encode
    from workbench.evaluate import EvalConfig, run_eval
    from workbench.probes.depth import DepthProbeConfig, run_depth_probes
    from workbench.probes.linear_maps import LinearMapsConfig, run_linear_maps
    from workbench.store.records import CodebookRecord, DictionaryEvalRecord, ProbeRunRecord

    root, half = str(store_dir), {"dtype": "bfloat16"}
    _harvest(store_dir, "h", tokens=1024, **half)
    run_depth_probes(
        DepthProbeConfig(model="tiny", store=root, tokens=512, lens_tokens=256, skip_tokens=256, name="d", **half),
        progress=False,
    )
    run_linear_maps(LinearMapsConfig(source="tiny", target="tiny", store=root, tokens=512, name="m", **half))
    trained = run_train(
        TrainConfig(store=root, hook="blocks.1.hook_out", k=4, latents=64, tokens=4096, batch_size=512, **half),
        progress=False,
    )
    run_eval(EvalConfig(store=root, dictionary=trained.dictionary.name, ce_tokens=256, **half))
    encoded = run_encode(EncodeConfig(store=root, dictionary=trained.dictionary.name, **half), progress=False)
    settings = FinetuneSettings(model_lr=0)
    run_codebook_train(
        CodebookTrainConfig(
            store=root, model="tiny", sites=["blocks.0.mlp.hook_out"], tokens=2048, n_codes=16, k=2,
            eval_tokens=512, kmeans_tokens=1024, finetune=settings, name="cb", **half,
        ),
        progress=False,
    )  # fmt: skip
    codes = run_codebook_encode(CodebookEncodeConfig(store=root, codebook="cb", run="h", **half), progress=False)
    assert encoded.n_rows > 0 and codes.rows > 0
    store = Store.open_existing(store_dir)
    with store.reader() as con:
        recorded = [
            read_one(con, ProbeRunRecord, probe_run="d"),
            read_one(con, ProbeRunRecord, probe_run="m"),
            read_one(con, RunRecord, run="h"),
            trained.dictionary,
            read_all(con, DictionaryEvalRecord)[0],
            read_one(con, CodebookRecord, name="cb"),
        ]
        scores = con.execute("SELECT depth_score FROM probe_depth_scores WHERE probe_run = 'd'").fetchall()
        diagonal = con.execute(
            "SELECT max(rel_error) FROM probe_linear_maps WHERE probe_run = 'm' AND source_layer = target_layer"
        ).fetchone()[0]
    assert [(r.device, r.dtype) for r in recorded] == [("cpu", "bfloat16")] * 6
    assert scores and np.isfinite([row[0] for row in scores]).all()
    assert diagonal < 0.01  # a model mapped onto itself, layer to the same layer: the identity, up to the ridge
