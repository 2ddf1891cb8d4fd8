"""Dictionary training: ground-truth recovery, exact resume, and bad input."""

import pytest
import torch

from workbench.dictionaries import DictionaryConfig, load_dictionary, make_dictionary
from workbench.dictionaries.base import DictionaryError
from workbench.train import Checkpointer, fit, geometric_median


def planted_data(n_atoms=256, d=64, k=4, seed=0):
    """Sparse combinations of known unit atoms: the ground truth a dictionary should recover."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=generator)
    atoms /= atoms.norm(dim=1, keepdim=True)

    def batches_from(step, batch=1024):
        while True:  # each batch is a function of its step, as the store's batches are
            g = torch.Generator().manual_seed(seed * 100_003 + step)
            idx = torch.rand(batch, n_atoms, generator=g).argsort(dim=1)[:, :k]
            coefficients = torch.rand(batch, k, generator=g) * 2 + 0.5
            x = (coefficients[..., None] * atoms[idx]).sum(1)
            yield x, x
            step += 1

    return atoms, batches_from


def mean_max_cosine(true_atoms, decoder):
    cos = torch.nn.functional.normalize(true_atoms, dim=1) @ torch.nn.functional.normalize(decoder, dim=1).T
    return cos.max(dim=1).values.mean().item()


def test_topk_recovers_a_planted_dictionary():
    atoms, batches_from = planted_data()
    torch.manual_seed(0)
    model = make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=512, k=4))
    state, tracker = fit(model, batches_from, n_steps=1500, lr=4e-3, dead_window_tokens=200_000, progress=False)
    recovery = mean_max_cosine(atoms, model.W_dec.data)
    print(f"TopK planted recovery: mean max cosine {recovery:.3f}, final batch FVU {state.last_fvu:.4f}, L0 {state.last_l0:.2f}")
    assert recovery > 0.95
    assert state.last_fvu < 0.1 and state.last_l0 <= 4
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(512), atol=1e-5)  # unit-norm decoder maintained


def test_resume_from_a_checkpoint_is_exact(tmp_path):
    _, batches_from = planted_data(seed=1)
    config = DictionaryConfig(arch="topk", d_in=64, n_latents=128, k=4)
    torch.manual_seed(0)
    straight = make_dictionary(config)
    fit(straight, batches_from, n_steps=60, lr=2e-3, dead_window_tokens=10_000, progress=False)

    torch.manual_seed(0)
    interrupted = make_dictionary(config)
    checkpointer = Checkpointer(tmp_path / "d")
    fit(interrupted, batches_from, n_steps=60, lr=2e-3, dead_window_tokens=10_000, checkpointer=checkpointer,
        checkpoint_seconds=0, progress=False, stop_after_steps=25)
    torch.manual_seed(123)  # a fresh process would not share the RNG state
    resumed = make_dictionary(config)
    state, _ = fit(resumed, batches_from, n_steps=60, lr=2e-3, dead_window_tokens=10_000, checkpointer=checkpointer,
                   checkpoint_seconds=0, progress=False)
    assert state.step == 60
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_saved_dictionary_round_trips_and_pickles_are_refused(tmp_path):
    model = make_dictionary(DictionaryConfig(arch="topk", d_in=16, n_latents=32, k=3))
    model.save(tmp_path / "dict")
    loaded = load_dictionary(tmp_path / "dict", expected_arch="topk")
    x = torch.randn(8, 16)
    assert torch.equal(model.encode(x), loaded.encode(x))
    torch.save(model.state_dict(), tmp_path / "evil.pt")
    with pytest.raises(DictionaryError, match="only safetensors"):
        load_dictionary(tmp_path / "evil.pt")
    with pytest.raises(DictionaryError, match="holds a 'topk' dictionary, not 'batchtopk'"):
        load_dictionary(tmp_path / "dict", expected_arch="batchtopk")


@pytest.mark.parametrize("k,latents", [(32, 32), (0, 32), (40, 32)])
def test_k_must_be_smaller_than_the_number_of_latents(k, latents):
    with pytest.raises(DictionaryError, match="k must be between 1"):
        DictionaryConfig(arch="topk", d_in=8, n_latents=latents, k=k)


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 1000.0)])
    median = geometric_median(points)
    assert (median - 1.0).abs().max() < 0.1
    assert points.mean(0).min() > 50  # the mean is dragged away; the median is not


@pytest.mark.parametrize("arch,transcoder,skip", [("topk", False, False), ("batchtopk", False, False), ("topk", True, True)])
def test_folding_the_training_scales_gives_the_same_outputs_on_raw_data(arch, transcoder, skip):
    torch.manual_seed(0)
    model = make_dictionary(DictionaryConfig(arch=arch, d_in=16, n_latents=64, k=4, transcoder=transcoder, skip_connection=skip))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if arch == "batchtopk":
            model.threshold.fill_(0.05)
    x = torch.randn(32, 16)
    s_in, s_out = (3.0, 0.01) if transcoder else (7.0, 7.0)
    expected = model.reconstruct(x * s_in) / s_out
    model.fold_scales(s_in, s_out)
    assert torch.allclose(model.reconstruct(x), expected, rtol=1e-4, atol=1e-6)


def test_training_is_invariant_to_the_scale_of_the_activations():
    atoms, batches_from = planted_data(seed=2)

    def scaled(step):
        return ((x * 1000, y * 1000) for x, y in batches_from(step))

    results = []
    for source in (batches_from, scaled):
        torch.manual_seed(0)
        model = make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=256, k=4))
        state, _ = fit(model, source, n_steps=200, lr=4e-3, dead_window_tokens=100_000, progress=False)
        results.append((state.last_fvu, mean_max_cosine(atoms, model.W_dec.data)))
    assert results[0] == pytest.approx(results[1], rel=1e-3)


def test_batchtopk_recovers_the_dictionary_and_learns_an_inference_threshold():
    atoms, batches_from = planted_data(seed=3)
    torch.manual_seed(0)
    model = make_dictionary(DictionaryConfig(arch="batchtopk", d_in=64, n_latents=512, k=4))
    state, _ = fit(model, batches_from, n_steps=1500, lr=4e-3, dead_window_tokens=200_000, progress=False)
    recovery = mean_max_cosine(atoms, model.W_dec.data)
    x, _ = next(batches_from(10_000))
    model.fold_scales(state.input_scale, state.target_scale)
    inference_l0 = (model.encode(x) != 0).sum(-1).float().mean().item()
    print(f"BatchTopK planted recovery {recovery:.3f}; inference L0 with the learned threshold {inference_l0:.2f} (k=4)")
    assert recovery > 0.9
    assert 2 <= inference_l0 <= 8  # the threshold reproduces the batch-level sparsity at inference


def test_matryoshka_prefixes_reconstruct_better_than_a_plain_batchtopk_prefix():
    """The Matryoshka property: the first latents alone already reconstruct the input well."""
    atoms, batches_from = planted_data(seed=4)
    x, _ = next(batches_from(50_000))
    prefix_fvu, recovery = {}, {}
    for arch in ("batchtopk", "matryoshka"):
        torch.manual_seed(0)
        model = make_dictionary(DictionaryConfig(arch=arch, d_in=64, n_latents=512, k=4))
        state, _ = fit(model, batches_from, n_steps=800, lr=4e-3, dead_window_tokens=200_000, progress=False)
        model.fold_scales(state.input_scale, state.target_scale)
        with torch.no_grad():
            f = model.encode(x)
            prefix = f[:, :64] @ model.W_dec[:64] + model.b_dec  # the first 1/8 of the latents
            prefix_fvu[arch] = ((x - prefix).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        recovery[arch] = mean_max_cosine(atoms, model.W_dec.data)
    print(f"FVU from the first 64 of 512 latents: {prefix_fvu}; planted recovery: {recovery}")
    assert prefix_fvu["matryoshka"] < prefix_fvu["batchtopk"] - 0.1
    assert recovery["matryoshka"] > 0.85
