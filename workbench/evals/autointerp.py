"""Autointerp: an LLM explains a feature from its marked contexts, and a scorer checks the explanation on held-out
contexts, as delphi (EleutherAI) does.

- Examples come from the store (the dictionary must be encoded): 32-token windows around activations, drawn from ten
  equal-width activation intervals (delphi's quantiles), half shown to the explainer with the top ones, half held out.
  Non-activating windows are random windows of the run where the feature never fires.
- The explainer sees each window with the tokens above 0.3 x its own maximum wrapped in << >> (runs merged), and
  answers one line after "[EXPLANATION]:".
- Detection: held-out activating windows and as many non-activating ones, unmarked: does this text have the feature?
  Fuzzing: held-out activating windows marked correctly, and non-activating windows with as many tokens marked at
  random as the activating ones have on average: are the marked tokens the feature's? Each prompt shows one window;
  the answer is read from the scorer's probabilities of "1" and "0" (delphi's log-prob mode), prediction at P >= 0.5.
  A score is the balanced accuracy, (TP/P + TN/N) / 2: 0.5 is chance. The ROC AUC of P("1") is kept beside it
  (delphi reports it in log-prob mode): a weak scorer that answers "1" to everything scores exactly 0.5 balanced
  accuracy, yet its probabilities may still rank the examples.
- The same scorer rates a random explanation (words drawn from the vocabulary) on the same windows: the baseline a
  weak scorer must beat before its scores mean anything.
Each feature's explanation and scores are committed as soon as they exist, so an interrupted run (a refused or
silent endpoint, Ctrl-C) keeps them and a re-run continues with the rest.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from workbench import features as feature_reads
from workbench.errors import EvaluationError
from workbench.evals.common import replace_scores
from workbench.evals.llm import LLM, Chat, EndpointLM, LocalLM
from workbench.store import Store, lookups
from workbench.store.records import DictionaryRecord, ExplanationRecord, ScoreRecord, insert, read_all

PROMPT_VERSION = "wb-1"
SUMMARY_METRICS = ("detection", "fuzzing", "detection_random", "fuzzing_random", "detection_auc", "fuzzing_auc",
                   "detection_auc_random", "fuzzing_auc_random")  # fmt: skip
MARK_THRESHOLD = 0.3  # a token is marked when its activation is above this share of its window's maximum
WINDOW_BEFORE, WINDOW_AFTER = 24, 7  # 32-token windows, as delphi's

EXPLAINER_SYSTEM = (
    "You are a meticulous AI researcher investigating patterns in language. You will see text examples in which "
    "some words are marked between delimiters like <<this>>. Find what the marked words have in common, in their "
    "context, and describe it in a few words. Do not mention the markers. Answer with one line that starts with "
    "[EXPLANATION]:"
)
DETECTION_SYSTEM = (
    "You are a meticulous linguistics researcher. You will be given a description of a text feature, such as "
    '"male pronouns" or "text about sports", and one text example. Answer 1 if the example has the feature, '
    "0 if it does not. Answer with the single digit."
)
FUZZING_SYSTEM = (
    "You are a meticulous linguistics researcher. You will be given a description of a text feature and one text "
    "example in which some tokens are marked between << and >>. Answer 1 if every marked token is an instance of the "
    "feature, 0 if the marks are wrong. Answer with the single digit."
)


@dataclass
class Window:
    tokens: list[str]
    values: list[float]


def marked_text(tokens: list[str], marked: list[bool]) -> str:
    """The window's text with each run of marked tokens wrapped in << >>."""
    out, inside = [], False
    for token, mark in zip(tokens, marked):
        if mark and not inside:
            out.append("<<")
        elif not mark and inside:
            out.append(">>")
        out.append(token)
        inside = mark
    return "".join(out) + (">>" if inside else "")


def marks(window: Window) -> list[bool]:
    top = max(window.values)
    return [v > MARK_THRESHOLD * top for v in window.values]


def explainer_chat(windows: list[Window]) -> Chat:
    examples = "\n".join(f"Example {i + 1}: {marked_text(w.tokens, marks(w))}" for i, w in enumerate(windows))
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": examples}]


def parse_explanation(reply: str) -> str:
    """The text after [EXPLANATION]: (or the reply's first line), on one line, at most 200 characters."""
    text = reply.split("[EXPLANATION]:", 1)[1] if "[EXPLANATION]:" in reply else reply
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line.strip("<> ")[:200] or "(no explanation)"


def _scoring_chat(system: str, explanation: str, text: str) -> Chat:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Feature: {explanation}\n\nText example: {text}\n\nAnswer (1 or 0):"},
    ]


def balanced_accuracy(probabilities: list[float], labels: list[bool]) -> float:
    predicted = np.array(probabilities) >= 0.5
    actual = np.array(labels)
    return float(((predicted & actual).sum() / actual.sum() + (~predicted & ~actual).sum() / (~actual).sum()) / 2)


@dataclass
class Score:
    balanced_accuracy: float
    auc: float

    @classmethod
    def of(cls, probabilities: list[float], labels: list[bool]) -> Score:
        from sklearn.metrics import roc_auc_score

        return cls(balanced_accuracy(probabilities, labels), float(roc_auc_score(labels, probabilities)))


@dataclass
class ScoringSet:
    """One feature's held-out windows, with the marks each scorer shows."""

    positives: list[Window]
    negatives: list[Window]
    negative_marks: list[list[bool]]  # fuzzing: random tokens of each negative window

    @property
    def labels(self) -> list[bool]:
        return [True] * len(self.positives) + [False] * len(self.negatives)

    def detection(self, scorer: LLM, explanation: str) -> Score:
        texts = [w.tokens for w in self.positives + self.negatives]
        chats = [_scoring_chat(DETECTION_SYSTEM, explanation, "".join(t)) for t in texts]
        return Score.of(scorer.yes_probability(chats), self.labels)

    def fuzzing(self, scorer: LLM, explanation: str) -> Score:
        texts = [marked_text(w.tokens, marks(w)) for w in self.positives]
        texts += [marked_text(w.tokens, m) for w, m in zip(self.negatives, self.negative_marks)]
        chats = [_scoring_chat(FUZZING_SYSTEM, explanation, t) for t in texts]
        return Score.of(scorer.yes_probability(chats), self.labels)


def _windows(contexts, context_len: int) -> list[Window]:
    """Windows with an activation; a window that starts at its context's start loses that BOS token."""
    windows = []
    for c in contexts:
        if c.values and max(c.values) > 0:
            at_start = (c.token_id - c.centre) % context_len == 0
            windows.append(Window(c.tokens[1:], c.values[1:]) if at_start else Window(c.tokens, c.values))
    return windows


def feature_windows(
    store: Store, record: DictionaryRecord, feature: int, n_explain: int, n_test: int, seed: int
) -> tuple[list[Window], ScoringSet]:
    """The windows shown to the explainer (the top ones, then every other interval sample) and the held-out set."""
    context_len = lookups.run(store, record.run).context_len
    samples = feature_reads.quantile_contexts(
        store, record, feature, n_intervals=10, per_interval=-(-n_test // 5), before=WINDOW_BEFORE, after=WINDOW_AFTER
    )
    held_out: list[Window] = []
    shown: list[Window] = []
    for sample in samples:  # alternate within each interval: half to the explainer, half held out
        for i, window in enumerate(_windows(sample.contexts, context_len)):
            (shown if i % 2 else held_out).append(window)
    top = _windows(
        feature_reads.top_contexts(store, record, feature, n=n_explain, before=WINDOW_BEFORE, after=WINDOW_AFTER),
        context_len,
    )
    explain = (top + shown)[:n_explain]
    held_out = held_out[:n_test]
    rng = random.Random(seed * 1_000_003 + feature)
    negatives = _silent_windows(store, record, feature, len(held_out), rng)
    n_marked = math.ceil(np.mean([sum(marks(w)) for w in held_out])) if held_out else 1
    negative_marks = []
    for w in negatives:
        chosen = set(rng.sample(range(1, len(w.tokens)), min(n_marked, len(w.tokens) - 1)))
        negative_marks.append([i in chosen for i in range(len(w.tokens))])
    return explain, ScoringSet(held_out, negatives, negative_marks)


def _silent_windows(store: Store, record: DictionaryRecord, feature: int, n: int, rng: random.Random) -> list[Window]:
    """Random windows of the run in which the feature never fires."""
    run = lookups.run(store, record.run)
    found: list[Window] = []
    for _ in range(5):  # draws of 3n candidates; a dense feature leaves few silent windows
        centres = []
        for _ in range(3 * n):
            context, position = rng.randrange(run.n_contexts), rng.randrange(WINDOW_BEFORE + 1, run.context_len)
            centres.append((context * run.context_len + position, 0.0))
        values_sql, params = feature_reads.reads.feature_window_values(store, record.name, feature)
        windows = feature_reads.context_windows(
            store, record.run, run.context_len, centres, WINDOW_BEFORE, WINDOW_AFTER, values_sql, params
        )
        found += [Window(w.tokens, w.values) for w in windows if w.tokens and not any(w.values)]
        if len(found) >= n:
            break
    return found[:n]


@dataclass
class ExplainConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name; it must be encoded (workbench encode), since the examples come from its activations."""
    features: list[int] = field(default_factory=list)
    """Features to explain (default: --n-features drawn at random among those with enough activations)."""
    n_features: int = 20
    """How many features to draw when --features is not given."""
    explainer: str = "smollm2-135m"
    """The local explainer and scorer: a registry name, HF folder or hub id (SmolLM2-135M-Instruct by default: weak,
    so read its scores against the random-explanation baseline)."""
    endpoint: str | None = None
    """An OpenAI-compatible API base instead (http://host:port/v1: vLLM, ollama, a hosted API); needs --model."""
    model: str | None = None
    """With --endpoint: the model name to ask for."""
    key_env: str = "OPENAI_API_KEY"
    """With --endpoint: the environment variable holding the API key (none sent if unset)."""
    timeout: float = 120.0
    """With --endpoint: seconds to wait for each answer before stopping (what is done is kept)."""
    explain_examples: int = 10
    """Activating windows the explainer sees (the top ones first)."""
    test_examples: int = 10
    """Held-out activating windows per score, and as many non-activating ones."""
    min_activations: int = 20
    """Features with fewer stored activations are skipped: too few windows to explain and to hold out."""
    seed: int = 0
    """Seed of the feature draw, the non-activating windows, the false marks and the random explanations."""
    device: str = "auto"
    """Where a local explainer runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """A local explainer's precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.model:
            raise EvaluationError("--endpoint needs --model, the name the endpoint serves the model under.")
        if self.test_examples < 2 or self.explain_examples < 1:
            raise EvaluationError("--test-examples must be at least 2 and --explain-examples at least 1.")

    @property
    def explainer_name(self) -> str:
        return f"{self.model} @ {self.endpoint}" if self.endpoint else self.explainer


@dataclass
class ExplainResult:
    explained: list[ExplanationRecord]
    """Written by this run."""
    already: int
    """Features that had an explanation from this explainer and prompt version (kept, not redone)."""
    skipped: dict[int, str]
    """Features left out, and why."""
    summary: dict[str, float]
    """Mean scores over every feature this explainer has explained in the dictionary."""


def _random_explanation(vocabulary: list[str], rng: random.Random) -> str:
    return " ".join(rng.sample(vocabulary, 4))


def run_explain(config: ExplainConfig, *, progress: bool = True) -> ExplainResult:
    """Explain and score features; each is committed as it finishes; a re-run continues where this one stopped."""
    store = Store.open_existing(config.store)
    record = lookups.completed_dictionary(store, config.dictionary)
    feature_reads.require_encoded(store, record, "autointerp reads its activations from the store")
    for feature in config.features:
        feature_reads.check_feature(record, feature)
    counts = {
        row["feature"]: row["n_active"]
        for row in feature_reads.features_table(store, record.name, limit=10**9).to_pylist()
    }
    rng = random.Random(config.seed)
    if config.features:
        chosen = list(config.features)
    else:
        eligible = sorted(f for f, n in counts.items() if n >= config.min_activations)
        chosen = sorted(rng.sample(eligible, min(config.n_features, len(eligible))))
    with store.reader() as con:
        done = {e.feature for e in read_all(con, ExplanationRecord, dictionary=record.name,
                                            explainer=config.explainer_name, prompt_version=PROMPT_VERSION)}  # fmt: skip
    todo = [f for f in chosen if f not in done]
    skipped = {f: f"{counts.get(f, 0)} activations (< --min-activations)" for f in todo
               if counts.get(f, 0) < config.min_activations}  # fmt: skip
    todo = [f for f in todo if f not in skipped]
    explained: list[ExplanationRecord] = []
    if todo:
        llm: LLM = (
            EndpointLM(config.endpoint, config.model or "", config.key_env, config.timeout)
            if config.endpoint
            else LocalLM(config.explainer, store.root / "models", config.device, config.dtype)
        )
        vocabulary = _vocabulary(store, record)
        steps = todo
        if progress:
            from tqdm import tqdm

            steps = tqdm(todo, desc=f"explain {record.name}", unit="feature")
        for feature in steps:
            shown, held_out = feature_windows(store, record, feature, config.explain_examples, config.test_examples,
                                              config.seed)  # fmt: skip
            if len(held_out.positives) < 2 or len(held_out.negatives) < 2:
                skipped[feature] = f"{len(held_out.positives)} held-out and {len(held_out.negatives)} silent windows"
                continue
            explanation = parse_explanation(llm.complete(explainer_chat(shown), max_tokens=40))
            baseline = _random_explanation(vocabulary, random.Random(config.seed * 7919 + feature))
            detection, fuzzing = held_out.detection(llm, explanation), held_out.fuzzing(llm, explanation)
            detection_random, fuzzing_random = held_out.detection(llm, baseline), held_out.fuzzing(llm, baseline)
            row = ExplanationRecord(
                dictionary=record.name,
                feature=feature,
                explanation=explanation,
                explainer=config.explainer_name,
                prompt_version=PROMPT_VERSION,
                scorer=config.explainer_name,
                detection=detection.balanced_accuracy,
                fuzzing=fuzzing.balanced_accuracy,
                detection_random=detection_random.balanced_accuracy,
                fuzzing_random=fuzzing_random.balanced_accuracy,
                detection_auc=detection.auc,
                fuzzing_auc=fuzzing.auc,
                detection_auc_random=detection_random.auc,
                fuzzing_auc_random=fuzzing_random.auc,
                n_scored=len(held_out.positives) + len(held_out.negatives),
            )
            with store.transaction() as con:  # committed now: an interruption keeps it
                insert(con, row)
            explained.append(row)
    summary = _write_summary(store, record.name, config)
    return ExplainResult(explained, len([f for f in chosen if f in done]), skipped, summary)


def _vocabulary(store: Store, record: DictionaryRecord) -> list[str]:
    """Words for random explanations: the letter-only tokens of the run's model, read from its tokenizer."""
    from transformers import AutoTokenizer

    from workbench.evals.absorption import alpha_vocabulary
    from workbench.models import resolve_model_dir

    run = lookups.run(store, record.run)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(run.model, store.root / "models"))
    return [word for _, word in alpha_vocabulary(tokenizer) if len(word) > 3]


def _write_summary(store: Store, dictionary: str, config: ExplainConfig) -> dict[str, float]:
    """Mean scores over the dictionary's explanations by this explainer and prompt version, to dictionary_scores."""
    with store.reader() as con:
        rows = read_all(con, ExplanationRecord, dictionary=dictionary, explainer=config.explainer_name,
                        prompt_version=PROMPT_VERSION)  # fmt: skip
    if not rows:
        return {}
    summary = {metric: float(np.mean([getattr(r, metric) for r in rows])) for metric in SUMMARY_METRICS}
    settings = {"explainer": config.explainer_name, "prompt_version": PROMPT_VERSION}
    replace_scores(store, dictionary, "autointerp",
                   [ScoreRecord(dictionary, "autointerp", "", metric, value, len(rows), settings)
                    for metric, value in summary.items()])  # fmt: skip
    return summary
