"""Feature absorption on the first-letter task (Chanin et al. 2024, in SAEBench's variant).

A word's first letter is linearly readable from the residual stream. A dictionary absorbs it when the features that
should carry "starts with S" stay silent on some S-words because a more specific feature ("the word 'short'") took
the letter direction in. Steps, as SAEBench's `evals/absorption` runs them:

1. Words: the vocabulary's tokens that are letters only (one leading space allowed), `--words` of them sampled, split
   80/20. Each is read inside an in-context prompt: `\n` then `--icl-examples` lines "{word} has the first letter: X",
   then "{word} has the first letter:"; the activation is the one at the word's token.
2. A probe per letter on the activations (one-vs-rest logistic regression, classes balanced; lbfgs, see probes.py). Letters whose probe F1 on the test
   words is at most 0.6 are left out.
3. Feature splits: an L1 probe on the dictionary's features ranks them per letter; k = 1, 2, ... 10 of the top-weighted
   features get a k-sparse logistic probe, and k grows while F1 improves by more than 0.03. Those k are the letter's
   split features.
4. For each test word the probe gets right, with P the activation's projection on the unit probe direction and each
   feature's projection f_j * cos(d_j, probe):
   - absorption fraction: main = the split features' projections, T = the top 3 projections of other features with
     cos >= 0.1 and positive projection; 0 if main >= P or T / P < 0.4, 1 if main <= 0, else A / (A + main) with
     A = min(T, P - main);
   - full absorption: every split feature silent, and the single most-projecting feature has cos >= 0.025 and carries
     >= 0.4 of P.
5. A letter's rate is the mean over its words; the dictionary's is the mean over letters.

Differences from SAEBench, kept on purpose: the absorption numbers are read from the test words' own prompts (SAEBench
builds a second prompt per word from the whole vocabulary), and every sample is seeded (SAEBench's absorption split
is not), so a re-run gives the same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.corpus import bos_token_id
from workbench.errors import EvaluationError
from workbench.evals.common import LoadedDictionary, activation_key, remember, replace_scores
from workbench.evals.probes import dense_letter_probes, f1_score, fit_small_probe, train_linear_probes
from workbench.store import Store
from workbench.store.records import ScoreRecord

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROBE_F1_MIN = 0.6  # letters whose dense probe is no better are left out
SPLIT_F1_JUMP = 0.03  # k grows while the k-sparse probe's F1 improves by more than this
MAX_SPLIT = 10
ABSORBER_COS = 0.1  # partial absorption: other features at least this aligned with the probe
ABSORBER_SHARE = 0.4  # ... must carry at least this share of the probe projection
N_ABSORBERS = 3
FULL_ABSORBER_COS = 0.025


@dataclass
class LetterScores:
    letter: str
    probe_f1: float
    split_features: list[int]
    split_f1: float
    n_words: int  # test words of this letter that the probe gets right
    absorption_rate: float | None  # None for a letter left out (probe F1 <= 0.6 or no words)
    full_absorption: float | None


@dataclass
class AbsorptionScores:
    letters: list[LetterScores]
    absorption_rate: float  # mean over the letters that count
    full_absorption: float
    split_features: float  # mean number of split features
    n_letters: int
    excluded: dict[str, str] = field(default_factory=dict)  # letter -> why it does not count


def measure_absorption(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decoder: torch.Tensor,
    min_letters: int = 10,
    seed: int = 0,
) -> AbsorptionScores:
    """Absorption from activations x [n, d] with first-letter labels y [n] (0-25), a dictionary's encoder and its
    decoder rows [latents, d]. Pure tensors, so a planted dictionary can be measured without a model."""
    n_classes = len(LETTERS)
    onehot = torch.nn.functional.one_hot(train_y, n_classes)
    probe_w, probe_b = dense_letter_probes(train_x, train_y, n_classes)
    test_logits = test_x.float() @ probe_w.T + probe_b
    f_train, f_test = encode(train_x), encode(test_x)
    sparse_w, _ = train_linear_probes(f_train, onehot, l1=0.01, seed=seed)
    unit_decoder = decoder.float() / decoder.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    letters, excluded = [], {}
    for c, letter in enumerate(LETTERS):
        actual_train, actual_test = (train_y == c).numpy(), (test_y == c).numpy()
        probe_f1 = f1_score((test_logits[:, c] > 0).numpy(), actual_test)
        if actual_train.sum() < 2 or actual_test.sum() == 0:
            excluded[letter] = f"{int(actual_train.sum())} training and {int(actual_test.sum())} test words"
            letters.append(LetterScores(letter, probe_f1, [], 0.0, 0, None, None))
            continue
        split, split_f1 = _feature_split(f_train, f_test, actual_train, actual_test, sparse_w[c])
        words = torch.from_numpy(actual_test) & (test_logits[:, c] > 0)
        unit_probe = probe_w[c] / probe_w[c].norm()
        fractions, full = _absorption(test_x[words].float(), f_test[words], unit_decoder, unit_probe, split)
        counts = probe_f1 > PROBE_F1_MIN and len(fractions) > 0
        if not counts:
            excluded[letter] = f"probe F1 {probe_f1:.2f}" if probe_f1 <= PROBE_F1_MIN else "no test word probed right"
        letters.append(
            LetterScores(
                letter,
                probe_f1,
                split,
                split_f1,
                len(fractions),
                float(fractions.mean()) if counts else None,
                float(full.float().mean()) if counts else None,
            )
        )
    counted = [s for s in letters if s.absorption_rate is not None]
    if len(counted) < min_letters:
        raise EvaluationError(
            f"Only {len(counted)} letters have a first-letter probe with F1 above {PROBE_F1_MIN} and test words "
            f"(need {min_letters}; left out: {', '.join(f'{k}: {v}' for k, v in excluded.items())}). Use more --words, "
            "a hook where the model represents spelling (a middle layer's residual stream), or lower --min-letters."
        )
    return AbsorptionScores(
        letters=letters,
        absorption_rate=float(np.mean([s.absorption_rate for s in counted])),
        full_absorption=float(np.mean([s.full_absorption for s in counted])),
        split_features=float(np.mean([len(s.split_features) for s in counted])),
        n_letters=len(counted),
        excluded=excluded,
    )


def _feature_split(
    f_train: torch.Tensor, f_test: torch.Tensor, y_train: np.ndarray, y_test: np.ndarray, sparse_weights: torch.Tensor
) -> tuple[list[int], float]:
    """The letter's split features: the top-weighted features of the L1 probe, as many as keep improving F1."""
    ranked = sparse_weights.argsort(descending=True)[:MAX_SPLIT].tolist()
    best_k, best_f1 = 0, -1.0
    for k in range(1, len(ranked) + 1):
        columns = ranked[:k]
        probe = fit_small_probe(f_train[:, columns].numpy(), y_train, balanced=True)
        f1 = f1_score(probe.predict(f_test[:, columns].numpy()).astype(bool), y_test)
        if k == 1 or f1 > best_f1 + SPLIT_F1_JUMP:
            best_k, best_f1 = k, max(f1, best_f1) if k > 1 else f1
        else:
            break
    return ranked[:best_k], best_f1


def _absorption(
    x: torch.Tensor, f: torch.Tensor, unit_decoder: torch.Tensor, unit_probe: torch.Tensor, split: list[int]
) -> tuple[np.ndarray, torch.Tensor]:
    """Per word: the absorption fraction and whether it is fully absorbed (module docstring, step 4)."""
    cos = unit_decoder @ unit_probe  # [latents]
    projection = f * cos  # [words, latents]
    total = x @ unit_probe  # P
    in_split = torch.zeros(len(cos), dtype=torch.bool)
    in_split[split] = True
    main = projection[:, in_split].sum(1)
    candidates = torch.where((~in_split) & (cos >= ABSORBER_COS) & (projection > 0), projection, 0.0)
    absorbed = candidates.topk(min(N_ABSORBERS, candidates.shape[1]), dim=1).values.sum(1)
    fractions = []
    for p, m, t in zip(total.tolist(), main.tolist(), absorbed.tolist()):
        if p <= 0 or m >= p or t / p < ABSORBER_SHARE:
            fractions.append(0.0)
        elif m <= 0:
            fractions.append(1.0)
        else:
            a = min(t, p - m)
            fractions.append(float(np.clip(a / (a + m), 0.0, 1.0)))
    top = projection.argmax(1)
    top_projection = projection.gather(1, top[:, None]).squeeze(1)
    full = (
        (f[:, in_split].abs() < 1e-8).all(1)
        & (cos[top] >= FULL_ABSORBER_COS)
        & (total >= 0)
        & (top_projection >= ABSORBER_SHARE * total)
    )
    return np.array(fractions), full


# -- the first-letter data of a model ----------------------------------------------------------------------


def alpha_vocabulary(tokenizer) -> list[tuple[int, str]]:
    """(token id, word) for every token that is ASCII letters only, one leading space allowed."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        word = text[1:] if text.startswith(" ") else text
        if word.isascii() and word.isalpha():
            words.append((token_id, word))
    return words


@dataclass
class FirstLetterData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def first_letter_prompts(
    tokenizer, n_words: int, icl_examples: int, seed: int
) -> tuple[list[list[int]], list[int], list[tuple[int, str]], int]:
    """(prompts, the word's position in each, the sampled (token id, word)s, the size of the letter vocabulary)."""
    vocabulary = alpha_vocabulary(tokenizer)
    if len(vocabulary) < 2 * len(LETTERS):
        raise EvaluationError(
            f"The tokenizer has only {len(vocabulary)} letter-only tokens; the first-letter task needs whole words."
        )
    rng = random.Random(seed)
    words = rng.sample(vocabulary, min(n_words, len(vocabulary)))
    n_train = int(0.8 * len(words))

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    newline, suffix = ids("\n"), ids(" has the first letter:")
    answers = {letter: ids(" " + letter.upper()) for letter in LETTERS}
    prompts, positions = [], []
    for token_id, _ in words:
        examples = rng.sample(words[:n_train], icl_examples)
        prompt = [bos_token_id(tokenizer), *newline]
        for example_id, example in examples:
            prompt += [example_id, *suffix, *answers[example[0].lower()], *newline]
        positions.append(len(prompt))
        prompts.append([*prompt, token_id, *suffix])
    return prompts, positions, words, len(vocabulary)


def first_letter_data(
    loaded: LoadedDictionary, n_words: int, icl_examples: int, seed: int, batch_size: int, progress: bool = False
) -> FirstLetterData:
    """Activations at the dictionary's hook on each sampled word, inside its in-context first-letter prompt."""
    prompts, positions, words, _ = first_letter_prompts(loaded.tokenizer, n_words, icl_examples, seed)
    n_train = int(0.8 * len(words))
    rows: dict[int, torch.Tensor] = {}
    activations = loaded.sequence_activations(prompts, batch_size)
    if progress:
        from tqdm import tqdm

        activations = tqdm(activations, total=len(prompts), desc="absorption: activations", unit="word")
    for i, sequence_acts in activations:
        rows[i] = sequence_acts[positions[i]]
    acts = torch.stack([rows[i] for i in range(len(words))])
    labels = torch.tensor([LETTERS.index(word[0].lower()) for _, word in words])
    return FirstLetterData(acts[:n_train], labels[:n_train], acts[n_train:], labels[n_train:])


@dataclass
class AbsorptionConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table); an SAE, since the probe and decoder must share a space."""
    words: int = 4000
    """Letter-only vocabulary tokens to sample (80% train the probes, 20% are measured)."""
    icl_examples: int = 10
    """In-context examples before each word ("{word} has the first letter: X"), as SAEBench prompts."""
    min_letters: int = 10
    """Letters whose probe must reach F1 > 0.6 for a score; fewer is an error (SAEBench asks 20 of a 2B model)."""
    seed: int = 0
    """Seed of the word sample, the split, the examples and the probes."""
    batch_size: int = 64
    """Prompts per forward pass."""
    backend: str = "nnsight"
    """Hooking library that reads the activations."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.words < 10 * len(LETTERS):
            raise EvaluationError(f"--words {self.words} is too few: give at least {10 * len(LETTERS)}.")


@dataclass
class AbsorptionResult:
    scores: AbsorptionScores
    rows: list[ScoreRecord]
    """As written to dictionary_scores (benchmark 'absorption')."""


def run_absorption(config: AbsorptionConfig, *, progress: bool = True) -> AbsorptionResult:
    """Measure a dictionary's first-letter absorption and replace its absorption rows in the store."""
    store = Store.open_existing(config.store)
    loaded = LoadedDictionary.load(store, config.dictionary, config.device, config.dtype, config.backend)
    if loaded.record.hook_out:
        raise EvaluationError(
            f"'{config.dictionary}' is a transcoder: absorption compares decoder rows with a probe of the same "
            "activations, so it needs an SAE (one --hook)."
        )
    key = activation_key(loaded, "first-letter", config.words, config.icl_examples, config.seed)
    data = remember(
        key,
        lambda: first_letter_data(loaded, config.words, config.icl_examples, config.seed, config.batch_size, progress),
    )
    scores = measure_absorption(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        loaded.encode,
        loaded.sae.W_dec.detach().cpu(),
        config.min_letters,
        config.seed,
    )
    settings = {k: v for k, v in vars(config).items() if k not in ("store", "dictionary")}

    def row(task: str, metric: str, value: float | None, n: int | None, extra: dict | None = None) -> ScoreRecord:
        return ScoreRecord(config.dictionary, "absorption", task, metric, value, n, {**settings, **(extra or {})})

    rows = [
        row("", "absorption_rate", scores.absorption_rate, scores.n_letters, {"excluded": scores.excluded}),
        row("", "full_absorption", scores.full_absorption, scores.n_letters),
        row("", "split_features", scores.split_features, scores.n_letters),
    ]
    for s in scores.letters:
        rows += [
            row(s.letter, "absorption_rate", s.absorption_rate, s.n_words, {"split_features": s.split_features}),
            row(s.letter, "full_absorption", s.full_absorption, s.n_words),
            row(s.letter, "probe_f1", s.probe_f1, s.n_words),
            row(s.letter, "split_f1", s.split_f1, s.n_words),
        ]
    replace_scores(store, config.dictionary, "absorption", rows)
    return AbsorptionResult(scores, rows)
