"""Codebooks on a workbench model: `workbench codebook train/encode/steer` on the tiny model and a real store,
exact resume, and the bad inputs of issue 7."""

import json

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from workbench.codebooks.attach import CodebookModel
from workbench.codebooks.finetune import (
    FinetuneSettings,
    codebook_identity,
    finetune,
    load_codebooks,
    model_fingerprint,
    save_codebooks,
)
from workbench.codebooks.fsm import TokFSM, tiny_transformer
from workbench.dictionaries.codebook import CodebookError

from conftest import run_cli, run_cli_in_process, start_cli, store_snapshot

SITES = "blocks.0.mlp.hook_out,blocks.1.attn.hook_out"
K, N_CODES = 2, 32


@pytest.fixture(scope="module")
def coded_store(tmp_path_factory, models_dir):
    """A store with a harvest run of the tiny model, and codebooks trained (model frozen) and encoded on it."""
    root = tmp_path_factory.mktemp("codebooks") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    harvest = run_cli_in_process(
        "harvest",
        "--model",
        "tiny",
        "--hooks",
        "blocks.0.mlp.hook_out",
        "--tokens",
        "2048",
        "--store",
        str(root),
        "--run",
        "h",
    )
    assert harvest.returncode == 0, harvest.stderr
    train = run_cli(
        "codebook",
        "train",
        "--model",
        "tiny",
        "--sites",
        SITES,
        "--store",
        str(root),
        "--tokens",
        "4096",
        "--codes",
        str(N_CODES),
        "--k",
        str(K),
        "--model-lr",
        "0",
        "--eval-tokens",
        "1024",
        "--name",
        "cb",
    )
    assert train.returncode == 0, train.stderr
    encode = run_cli_in_process("codebook", "encode", "--store", str(root), "--codebook", "cb", "--run", "h")
    assert encode.returncode == 0, encode.stderr
    return root, train.stdout, encode.stdout


def test_train_reports_the_lm_loss_before_and_after_and_saves_only_the_codebooks(coded_store):
    root, stdout, _ = coded_store
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    row = con.execute(
        "SELECT status, sites, n_codes, k, steps_done, tokens_done, lm_loss_original, lm_loss_codebooks, "
        "lm_loss_increase, lm_loss_bypassed, recon_error FROM codebooks WHERE name = 'cb'"
    ).fetchone()
    con.close()
    status, sites, n_codes, k, steps, tokens, before, after, increase, bypassed, recon = row
    assert status == "complete" and sites == SITES.split(",") and (n_codes, k) == (N_CODES, K)
    assert steps == 4 and tokens == 4096  # 4096 tokens = 4 steps of 8 contexts x 128
    assert np.isfinite([before, after]).all() and increase == pytest.approx(after - before)
    assert bypassed == pytest.approx(before, abs=1e-5)  # the model was frozen (--model-lr 0): bypassed is the original
    assert 0 < recon < 1.5
    assert f"original model {before:.4f}, with codebooks {after:.4f}" in stdout
    info = run_cli("store", "info", str(root))
    assert info.returncode == 0 and "Codebooks" in info.stdout and f"{round(before, 4)}" in info.stdout
    files = {p.name for p in (root / "codebooks" / "cb" / "final").iterdir()}
    assert files == {"codebooks.safetensors", "identity.json"}  # the frozen model is not copied


def test_stored_codes_are_the_top_k_cosine_codes_of_the_harvested_activations(coded_store):
    """Two implementations agree: the model's bottleneck during `encode`, and cosine top-k of the harvest's shards
    against the saved codebook. blocks.0.mlp.hook_out is the first site and the model is frozen, so it sees
    exactly what the plain model wrote there."""
    root, _, encode_out = coded_store
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True, config={"file_search_path": str(root)})
    n_tokens = con.execute("SELECT count(*) FROM tokens WHERE run = 'h'").fetchone()[0]
    n_rows = con.execute("SELECT count(*) FROM codebook_codes WHERE codebook = 'cb' AND run = 'h'").fetchone()[0]
    assert n_rows == n_tokens * 2 * K and f"{n_rows:,}" in encode_out
    # Each (token, site) has k distinct codes with ranks 0..k-1, all in range.
    bad = con.execute(
        "SELECT count(*) FROM (SELECT token_id, site, count(DISTINCT code) AS c, min(rank) AS lo, "
        "max(rank) AS hi FROM codebook_codes GROUP BY ALL) WHERE c != ? OR lo != 0 OR hi != ?",
        [K, K - 1],
    ).fetchone()[0]
    assert bad == 0
    assert con.execute("SELECT min(code) >= 0 AND max(code) < ? FROM codebook_codes", [N_CODES]).fetchone()[0]
    stored = con.execute(
        "SELECT token_id, code FROM codebook_codes WHERE site = 'blocks.0.mlp.hook_out' ORDER BY token_id, rank"
    ).fetchnumpy()
    acts = con.execute(
        "SELECT token_id, act FROM activations WHERE run = 'h' AND hook = 'blocks.0.mlp.hook_out' ORDER BY token_id"
    ).fetchnumpy()
    con.close()
    codebook = load_file(root / "codebooks" / "cb" / "final" / "codebooks.safetensors")[
        "bottlenecks.blocks_0_mlp_hook_out.codebook"
    ]
    x = torch.tensor(np.stack(acts["act"]), dtype=torch.float32)
    expected = (
        (torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(codebook, dim=-1).T).topk(K).indices
    )
    got = torch.from_numpy(stored["code"].reshape(-1, K))
    assert np.array_equal(stored["token_id"][::K], acts["token_id"])
    same = (got.sort(-1).values == expected.sort(-1).values).all(-1).float().mean().item()
    assert same > 0.99, same  # harvest shards are fp32; near-ties may flip a rank at float precision


def test_sql_finds_a_codes_contexts_a_tokens_codes_and_a_codes_purity(coded_store):
    from workbench.store import Store
    from workbench.store.sql import EXAMPLE_QUERIES, run_query

    root, _, _ = coded_store
    queries = {title: sql for title, sql in EXAMPLE_QUERIES.items() if "codebook_codes" in sql}
    assert len(queries) >= 3
    for title, sql in queries.items():
        table = run_query(Store.open_existing(root), sql, max_rows=100).table
        assert table.num_rows > 0, title


def test_steering_forces_the_code_everywhere_and_keeps_the_sampling_seeds(coded_store):
    from workbench.codebooks.steer import generate, steer
    from workbench.codebooks.train import open_codebook_model
    from workbench.store import Store

    root, _, _ = coded_store
    coded, tokenizer, _ = open_codebook_model(Store.open_existing(root), "cb")
    site = "blocks.1.attn.hook_out"
    first = generate(coded, tokenizer, "The cat sat", n_samples=3, max_new_tokens=6, seed=3)
    assert first == generate(coded, tokenizer, "The cat sat", n_samples=3, max_new_tokens=6, seed=3)
    # The code that fires least on the prompt, forced at every position: the recorded codes show it everywhere.
    with torch.no_grad():
        coded(torch.tensor([[tokenizer.bos_token_id] + tokenizer("The cat sat")["input_ids"]]))
    code = int(torch.bincount(coded.codes[site].reshape(-1), minlength=N_CODES).argmin())
    result = steer(
        coded, tokenizer, "The cat sat", {site: code}, targets=["the"], n_samples=3, max_new_tokens=6, seed=3
    )
    assert result.baseline == first and result.steered != result.baseline
    with coded.forcing(site, code, slice(None)), torch.no_grad():
        coded(torch.tensor([[tokenizer.bos_token_id] + tokenizer("The cat sat")["input_ids"]]))
    assert (coded.codes[site] == code).any(-1).all()
    assert result.baseline_rate == sum("the" in t.lower() for t in result.baseline) / 3


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    fsm = TokFSM.random(seed=0)
    settings = FinetuneSettings(codebook_lr=1e-3, model_lr=1e-4, dead_window_tokens=200, checkpoint_seconds=0)
    batch_at = lambda step: fsm.sample(8, 8, seed=step)[0]  # noqa: E731

    def fresh():
        coded = CodebookModel(
            tiny_transformer(fsm, seed=1), ["blocks.0.mlp.hook_out", "blocks.1.attn.hook_out"], 16, k=2
        )
        coded.kmeans_init(fsm.sample(16, 8, seed=99)[0])
        return coded, codebook_identity(coded, model_fingerprint(coded.hf_model))

    whole, identity = fresh()
    finetune(whole, batch_at, 12, settings, identity, tmp_path / "whole", progress=False)
    parts, identity = fresh()
    finetune(parts, batch_at, 12, settings, identity, tmp_path / "parts", progress=False, stop_after_steps=5)
    assert json.loads((tmp_path / "parts" / "checkpoint" / "state.json").read_text())["step"] == 5
    resumed, identity = fresh()  # a new process: nothing carried over but the checkpoint
    state = finetune(resumed, batch_at, 12, settings, identity, tmp_path / "parts", progress=False)
    assert state.step == 12
    for key, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-6), key


def test_codebooks_refuse_another_model_and_changed_settings(tmp_path):
    fsm = TokFSM.random(seed=0)
    coded = CodebookModel(tiny_transformer(fsm, seed=1), ["blocks.0.mlp.hook_out"], 16, k=2)
    identity = codebook_identity(coded, model_fingerprint(coded.hf_model))
    save_codebooks(coded, tmp_path, identity, train_model=False)
    other = CodebookModel(tiny_transformer(fsm, seed=2), ["blocks.0.mlp.hook_out"], 16, k=2)
    with pytest.raises(CodebookError, match="trained on another model"):
        load_codebooks(other, tmp_path, codebook_identity(other, model_fingerprint(other.hf_model)))
    bigger = CodebookModel(coded.hf_model, ["blocks.0.mlp.hook_out"], 32, k=2)
    with pytest.raises(CodebookError, match="differ in n_codes"):
        load_codebooks(bigger, tmp_path, codebook_identity(bigger, identity["model_fingerprint"]))
    # A checkpoint is checked the same way before it is resumed.
    finetune(
        coded,
        lambda step: fsm.sample(4, 4, seed=step)[0],
        3,
        FinetuneSettings(checkpoint_seconds=0),
        identity,
        tmp_path / "run",
        progress=False,
        stop_after_steps=1,
    )
    with pytest.raises(CodebookError, match="trained on another model"):
        finetune(
            other,
            lambda step: fsm.sample(4, 4, seed=step)[0],
            3,
            FinetuneSettings(),
            codebook_identity(other, model_fingerprint(other.hf_model)),
            tmp_path / "run",
            progress=False,
        )


def test_bad_cli_input_gets_a_clear_error_and_changes_nothing(coded_store):
    root, _, _ = coded_store
    before = store_snapshot(root)
    cases = [
        (
            ["codebook", "train", "--model", "tiny", "--sites", "blocks.7.mlp.hook_out", "--store", str(root)],
            "out of range",
        ),
        (["codebook", "train", "--model", "tiny", "--sites", "blocks.0.hook_resid", "--store", str(root)], "hook"),
        (
            [
                "codebook",
                "train",
                "--model",
                "tiny",
                "--sites",
                SITES,
                "--codes",
                "8",
                "--k",
                "9",
                "--store",
                str(root),
            ],
            "codebook size",
        ),
        (
            [
                "codebook",
                "train",
                "--model",
                "tiny",
                "--sites",
                SITES,
                "--store",
                str(root),
                "--tokens",
                "4096",
                "--codes",
                str(N_CODES),
                "--k",
                str(K),
                "--model-lr",
                "1e-4",
                "--eval-tokens",
                "1024",
                "--name",
                "cb",
            ],
            "different settings",
        ),
        (
            [
                "codebook",
                "steer",
                "--store",
                str(root),
                "--codebook",
                "cb",
                "--site",
                "blocks.0.mlp.hook_out",
                "--code",
                str(N_CODES),
                "--prompt",
                "hi",
            ],
            f"codes 0 to {N_CODES - 1}",
        ),
        (
            [
                "codebook",
                "steer",
                "--store",
                str(root),
                "--codebook",
                "cb",
                "--site",
                "blocks.1.mlp.hook_out",
                "--code",
                "1",
                "--prompt",
                "hi",
            ],
            "No codebook at",
        ),
        (["codebook", "encode", "--store", str(root), "--codebook", "cb", "--run", "nope"], "No run 'nope'"),
        (["codebook", "encode", "--store", str(root), "--codebook", "nope", "--run", "h"], "No codebooks 'nope'"),
    ]
    for index, (args, message) in enumerate(cases):
        # The first through a real process (its exit status end to end), the rest through the same main() here.
        result = run_cli(*args) if index == 0 else run_cli_in_process(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr
    assert store_snapshot(root) == before
    config = json.loads(
        duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
        .execute("SELECT config FROM codebooks WHERE name = 'cb'")
        .fetchone()[0]
    )
    assert config["finetune"]["model_lr"] == 0


def test_forcing_only_fills_every_slot_and_swap_keeps_the_strongest_codes(coded_store):
    from workbench.codebooks.train import open_codebook_model
    from workbench.store import Store

    root, _, _ = coded_store
    coded, tokenizer, _ = open_codebook_model(Store.open_existing(root), "cb")
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer("def f(x): return x")["input_ids"]])
    site = "blocks.0.mlp.hook_out"
    with torch.no_grad():
        coded(ids)
        natural = coded.codes[site].clone()
        code = int(torch.bincount(natural.reshape(-1), minlength=N_CODES).argmin())
        with coded.forcing(site, code, slice(None), mode="swap"):
            coded(ids)
        swapped = coded.codes[site]
        assert torch.equal(swapped[..., :-1], natural[..., :-1]) and (swapped[..., -1] == code).all()
        with coded.forcing(site, code, slice(2, 3), mode="only"):
            coded(ids)
        only = coded.codes[site]
        assert (only[:, 2] == code).all() and torch.equal(only[:, :2], natural[:, :2])
    with pytest.raises(CodebookError, match="Forcing mode"):
        with coded.forcing(site, code, slice(None), mode="everything"):
            pass


def test_per_head_codebooks_read_each_heads_output_and_force_only_that_head(tiny_dir):
    """attn.hook_z: one codebook per head on the output projection's input. With the bottleneck switched off
    the site sees exactly what the backends' attn.hook_z gives; each head's k codes come from its own codebook;
    forcing a code touches its head's slots and output slice only."""
    from workbench.hooks import HookPoint
    from workbench.models import load_hf_model, make_backend
    from workbench.models.families import attention_heads

    hf_model, tokenizer = load_hf_model(tiny_dir)
    n_heads, d_head = attention_heads(hf_model)
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer("for i in range(10): print(i)")["input_ids"]])
    site = "blocks.1.attn.hook_z"
    coded = CodebookModel(hf_model, [site], n_codes=8, k=2).eval()
    coded.enabled = False
    with torch.no_grad():
        coded(ids)
    z = (
        make_backend("nnsight", hf_model, tokenizer)
        .run(ids, [HookPoint(1, "attn.hook_z")])
        .acts[HookPoint(1, "attn.hook_z")]
    )
    assert torch.allclose(coded.inputs[site], z, atol=1e-5)
    coded.enabled = True
    coded.kmeans_init(ids, batch_size=1)
    bottleneck = coded.bottleneck(site)
    assert bottleneck.total_codes == 8 * n_heads and bottleneck.codebook.shape == (8 * n_heads, d_head)
    with torch.no_grad():
        coded(ids)
    codes = coded.codes[site]
    assert codes.shape == (1, ids.shape[1], n_heads * 2)
    assert torch.equal(
        codes // 8, torch.arange(n_heads).repeat_interleave(2).expand_as(codes)
    )  # head h's slots hold head h's codes
    # Each head's codes are that head's top 2 by cosine.
    unit = torch.nn.functional.normalize(z.reshape(*z.shape[:-1], n_heads, d_head), dim=-1)
    cb = torch.nn.functional.normalize(bottleneck.codebook, dim=-1).reshape(n_heads, 8, d_head)
    expected = torch.einsum("bshd,hnd->bshn", unit, cb).topk(2).indices + torch.arange(n_heads)[:, None] * 8
    assert torch.equal(codes.reshape(1, -1, n_heads, 2).sort(-1).values, expected.sort(-1).values)
    natural = codes.clone()
    head, code = 2, 2 * 8 + 5
    with coded.forcing(site, code, slice(None), mode="only"), torch.no_grad():
        coded(ids)
    forced = coded.codes[site]
    assert (forced[..., 2 * head : 2 * head + 2] == code).all()
    others = [i for i in range(n_heads * 2) if i // 2 != head]
    assert torch.equal(forced[..., others], natural[..., others])
    with pytest.raises(CodebookError, match=f"codes 0 to {8 * n_heads - 1}"):
        coded.check_code(site, 8 * n_heads)


def test_per_head_sites_train_and_encode_through_the_cli(store_dir):
    assert (
        run_cli_in_process(
            "harvest",
            "--model",
            "tiny",
            "--hooks",
            "blocks.0.hook_out",
            "--tokens",
            "1024",
            "--store",
            str(store_dir),
            "--run",
            "h",
        ).returncode
        == 0
    )
    # In this process: `workbench codebook train` and `encode` run as real processes in coded_store.
    train = run_cli_in_process(
        "codebook",
        "train",
        "--model",
        "tiny",
        "--sites",
        "blocks.1.attn.hook_z",
        "--store",
        str(store_dir),
        "--tokens",
        "2048",
        "--codes",
        "16",
        "--k",
        "1",
        "--eval-tokens",
        "512",
        "--name",
        "heads",
    )
    assert train.returncode == 0, train.stderr
    encode = run_cli_in_process("codebook", "encode", "--store", str(store_dir), "--codebook", "heads", "--run", "h")
    assert encode.returncode == 0, encode.stderr
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    n_tokens = con.execute("SELECT count(*) FROM tokens").fetchone()[0]
    rows = con.execute("SELECT count(*), count(DISTINCT code // 16), max(rank) FROM codebook_codes").fetchone()
    wrong_head = con.execute("SELECT count(*) FROM codebook_codes WHERE code // 16 != rank").fetchone()[0]
    con.close()
    n_heads = 4
    assert rows == (n_tokens * n_heads, n_heads, n_heads - 1) and wrong_head == 0  # k=1: rank h is head h's code


@pytest.mark.slow
def test_codebook_train_encode_and_steer_on_smollm2(store_dir):
    """The issue's command on the real model at a small scale: two layer-3 sites, 4 steps, then codes and steering."""
    args = ["--store", str(store_dir)]
    assert (
        run_cli(
            "harvest",
            "--model",
            "smollm2-135m",
            "--hooks",
            "blocks.3.hook_out",
            "--tokens",
            "2048",
            *args,
            "--run",
            "h",
            timeout=900,
        ).returncode
        == 0
    )
    train = run_cli(
        "codebook",
        "train",
        "--model",
        "smollm2-135m",
        "--sites",
        "blocks.3.mlp.hook_out,blocks.3.attn.hook_z",
        "--tokens",
        "4096",
        "--codes",
        "256",
        "--k",
        "4",
        "--eval-tokens",
        "1024",
        "--name",
        "cb",
        *args,
        timeout=1800,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    before, after, bypassed = con.execute(
        "SELECT lm_loss_original, lm_loss_codebooks, lm_loss_bypassed FROM codebooks"
    ).fetchone()
    con.close()
    assert 1.0 < before < 6.0 and after - bypassed < 1.0  # k-means codes plus 4 steps cost under a nat
    assert run_cli("codebook", "encode", "--codebook", "cb", "--run", "h", *args, timeout=900).returncode == 0
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    per_site = dict(con.execute("SELECT site, count(*) FROM codebook_codes GROUP BY site").fetchall())
    con.close()
    assert per_site == {"blocks.3.mlp.hook_out": 2048 * 4, "blocks.3.attn.hook_z": 2048 * 9 * 4}  # 9 heads
    steer = run_cli(
        "codebook",
        "steer",
        "--codebook",
        "cb",
        "--site",
        "blocks.3.mlp.hook_out",
        "--code",
        "0",
        "--prompt",
        "The function returns",
        "--targets",
        " the",
        "--samples",
        "2",
        "--max-new-tokens",
        "4",
        *args,
        timeout=900,
    )
    assert steer.returncode == 0 and "share showing a target" in steer.stdout, steer.stderr[-2000:]


def test_codebook_train_killed_mid_run_resumes_to_the_same_codebooks(store_dir):
    """kill -9 during `workbench codebook train`, run the same command again: the same codebooks as a run never
    interrupted, and the LM loss of the original model is not measured twice."""
    import os
    import signal
    import subprocess
    import time

    common = [
        "codebook",
        "train",
        "--model",
        "tiny",
        "--sites",
        SITES,
        "--store",
        str(store_dir),
        "--tokens",
        "8192",
        "--codes",
        "16",
        "--k",
        "2",
        "--eval-tokens",
        "512",
        "--checkpoint-seconds",
        "0",
        "--model-lr",
        "1e-4",
    ]
    whole = run_cli_in_process(*common, "--name", "whole")  # the reference needs no process of its own
    assert whole.returncode == 0, whole.stderr
    process = start_cli(*common, "--name", "killed", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from workbench.checkpoints import readable_folder

    def checkpoint_step() -> int:
        folder = readable_folder(store_dir / "codebooks" / "killed" / "checkpoint")  # a read may fall between renames
        try:
            return json.loads((folder / "state.json").read_text())["step"] if folder else 0
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and checkpoint_step() < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint_step()
    assert 3 <= interrupted_at < 8, interrupted_at  # 8 steps in all: it was killed part-way
    resumed = run_cli_in_process(*common, "--name", "killed")  # the resume is the code under test, not its process
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(store_dir / "codebooks" / "whole" / "final" / "codebooks.safetensors")
    b = load_file(store_dir / "codebooks" / "killed" / "final" / "codebooks.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[key].float(), b[key].float(), atol=1e-5) for key in a)
    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT name, steps_done, lm_loss_original, lm_loss_codebooks FROM codebooks ORDER BY name"
    ).fetchall()
    con.close()
    (k_name, k_steps, k_before, k_after), (w_name, w_steps, w_before, w_after) = rows
    assert (
        k_steps == w_steps == 8 and k_before == pytest.approx(w_before) and k_after == pytest.approx(w_after, abs=1e-5)
    )


def test_default_steering_targets_are_the_codes_commonest_word_tokens(coded_store):
    from workbench.codebooks.browse import default_targets
    from workbench.store import Store
    from workbench.store.codes import code_tokens

    root, _, _ = coded_store
    store = Store.open_existing(root)
    site = "blocks.1.attn.hook_out"
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    code = con.execute("SELECT mode(code) FROM codebook_codes WHERE site = ?", [site]).fetchone()[0]
    con.close()
    ranked = code_tokens(store, "cb", site, code, n=50).column("token").to_pylist()
    targets = default_targets(store, "cb", site, code)
    assert 0 < len(targets) <= 5 and all(any(c.isalnum() for c in t) for t in targets)
    assert targets == [t for t in ranked if any(c.isalnum() for c in t)][:5]  # in order of firings, word tokens only
