"""Circuit tasks: clean and corrupted prompt pairs, the answers that score them, and the metric.

    ioi            "When Mary and John went to the store, John gave a drink to" -> " Mary" over " John";
                   corrupted by replacing the second subject with a third name (the ABC
                   baseline of Wang et al.), so every position keeps its length.
    greater-than   "The war lasted from the year 1732 to the year 17" -> a tens digit above 3.
                   SmolLM2's tokenizer writes every digit as its own token, so the model
                   predicts the end year's tens digit: the answers are the digits above the
                   start year's tens digit, the wrong ones those below it (the equal digit is
                   ambiguous and left out), and the metric is the probability difference.
                   Corrupted: the start year ends in 01, as in Hanna et al.
    PATH.jsonl     one object per line: {"clean", "corrupted", "answer", "wrong"}; answer and
                   wrong are single-token strings (or lists of them), scored by logit difference.

Patching needs each clean prompt and its corrupted twin to have the same number of tokens,
and every answer to be one token; `tokenize_task` checks both and says which pair fails.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.corpus import bos_token_id
from workbench.errors import WorkbenchError


class TaskError(WorkbenchError):
    pass


METRICS = ("logit_diff", "prob_diff")


@dataclass
class PromptPair:
    clean: str
    corrupted: str
    answers: list[str]  # continuations that count as right
    wrong: list[str]  # continuations that count as wrong


@dataclass
class Task:
    name: str
    pairs: list[PromptPair]
    metric: str = (
        "logit_diff"  # logit_diff: mean logit of answers - mean of wrong; prob_diff: the same with probabilities summed
    )
    description: str = ""


@dataclass
class TokenizedTask:
    task: Task
    clean_ids: torch.Tensor  # [pairs, seq], BOS first
    corrupted_ids: torch.Tensor  # [pairs, seq]
    answer_ids: torch.Tensor  # [pairs, max answers], padded with -1
    wrong_ids: torch.Tensor  # [pairs, max wrong], padded with -1
    tokens: list[list[str]] = field(default_factory=list)  # the clean prompts' tokens, for labels

    @property
    def seq_len(self) -> int:
        return self.clean_ids.shape[1]

    def to(self, device: torch.device | str) -> TokenizedTask:
        """The same task with its id tensors on `device` (where the model runs)."""
        return dataclasses.replace(
            self,
            clean_ids=self.clean_ids.to(device),
            corrupted_ids=self.corrupted_ids.to(device),
            answer_ids=self.answer_ids.to(device),
            wrong_ids=self.wrong_ids.to(device),
        )


def metric_values(logits: torch.Tensor, answer_ids: torch.Tensor, wrong_ids: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-prompt metric from the last position's logits [n, vocab]; answer/wrong ids padded with -1."""
    scores = logits.float() if metric == "logit_diff" else torch.softmax(logits.float(), dim=-1)

    def pooled(ids: torch.Tensor) -> torch.Tensor:
        mask = ids >= 0
        picked = scores.gather(1, ids.clamp_min(0)) * mask
        return picked.sum(1) / mask.sum(1) if metric == "logit_diff" else picked.sum(1)

    return pooled(answer_ids) - pooled(wrong_ids)


# -- the built-in tasks --------------------------------------------------------------------------

# One template, so that every prompt has the same length (patching scores positions across prompts);
# names, places and things vary, and are kept only where the tokenizer writes them as one token.
IOI_TEMPLATE = "When {A} and {B} went to the {place}, {B} gave a {thing} to"
IOI_NAMES = [
    "Mary",
    "John",
    "Tom",
    "James",
    "Anna",
    "Paul",
    "Sarah",
    "David",
    "Kate",
    "Mark",
    "Lisa",
    "Peter",
    "Emma",
    "Jack",
    "Alice",
    "Henry",
    "Laura",
    "Mike",
    "Susan",
    "Daniel",
]
IOI_PLACES = ["store", "park", "school", "station", "garden", "office", "market", "hospital"]
IOI_THINGS = ["drink", "book", "ring", "ball", "letter", "bag", "snack", "gift"]
GT_NOUNS = ["war", "expedition", "reign", "drought", "strike", "contract", "project", "journey", "siege", "famine"]


def _single_token_words(tokenizer, words: list[str]) -> list[str]:
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def ioi_task(tokenizer, n_pairs: int = 16, seed: int = 0) -> Task:
    names = _single_token_words(tokenizer, IOI_NAMES)
    places = _single_token_words(tokenizer, IOI_PLACES)
    things = _single_token_words(tokenizer, IOI_THINGS)
    if len(names) < 3:
        raise TaskError("The IOI task needs at least 3 names that this tokenizer writes as one token each.")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        a, b, c = rng.sample(names, 3)
        template = IOI_TEMPLATE
        fill = dict(place=rng.choice(places), thing=rng.choice(things))
        clean = template.format(A=a, B=b, **fill)
        # ABC corruption: the second mention of the subject becomes a third name.
        head, tail = template.rsplit("{B}", 1)
        corrupted = head.format(A=a, B=b, **fill) + c + tail.format(**fill)
        pairs.append(PromptPair(clean, corrupted, answers=[" " + a], wrong=[" " + b]))
    return Task("ioi", pairs, "logit_diff", "indirect object identification (Wang et al. 2022), ABC corruption")


def greater_than_task(tokenizer, n_pairs: int = 16, seed: int = 0) -> Task:
    nouns = _single_token_words(tokenizer, GT_NOUNS)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        century = rng.choice(["11", "12", "13", "14", "15", "16", "17", "18"])
        tens, ones = rng.randint(1, 8), rng.randint(0, 9)
        noun = rng.choice(nouns)
        template = "The {noun} lasted from the year {start} to the year {century}"
        clean = template.format(noun=noun, start=f"{century}{tens}{ones}", century=century)
        corrupted = template.format(noun=noun, start=f"{century}01", century=century)
        pairs.append(
            PromptPair(
                clean, corrupted, answers=[str(d) for d in range(tens + 1, 10)], wrong=[str(d) for d in range(0, tens)]
            )
        )
    return Task(
        "greater-than",
        pairs,
        "prob_diff",
        "greater-than (Hanna et al. 2023) on one-token digits: P(tens digit above the start's) - P(below)",
    )


def jsonl_task(path: Path) -> Task:
    pairs = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise TaskError(f"Cannot read the task file {path}: {exc.strerror or exc}.") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            listed = [[v] if isinstance(v, str) else list(v) for v in (row["answer"], row["wrong"])]
            pairs.append(PromptPair(row["clean"], row["corrupted"], *listed))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TaskError(
                f'{path}, line {number}: each line must be a JSON object with "clean", "corrupted", '
                f'"answer" and "wrong" ({type(exc).__name__}: {exc}).'
            ) from exc
    if not pairs:
        raise TaskError(f"{path} holds no prompt pairs.")
    return Task(Path(path).stem, pairs, "logit_diff", f"prompt pairs from {path}")


def load_task(spec: str, tokenizer, n_pairs: int = 16, seed: int = 0) -> Task:
    if spec == "ioi":
        return ioi_task(tokenizer, n_pairs, seed)
    if spec == "greater-than":
        return greater_than_task(tokenizer, n_pairs, seed)
    if spec.endswith(".jsonl"):
        return jsonl_task(Path(spec))
    raise TaskError(f"Unknown task '{spec}': use ioi, greater-than, or a PATH.jsonl of prompt pairs.")


# -- tokenization ----------------------------------------------------------------------------------


def _answer_id(tokenizer, text: str, pair_number: int) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TaskError(
            f"Pair {pair_number}: the answer {text!r} is {len(ids)} tokens ({pieces}), not one. "
            "Use a single-token answer (often with a leading space, e.g. ' Mary')."
        )
    return ids[0]


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def tokenize_task(task: Task, tokenizer) -> TokenizedTask:
    """[BOS] + prompt for both sides; every pair's two prompts, and all pairs, must have one length."""
    bos = bos_token_id(tokenizer)
    clean: list[list[int]] = []
    corrupted: list[list[int]] = []
    answers: list[list[int]] = []
    wrong: list[list[int]] = []
    for number, pair in enumerate(task.pairs, start=1):
        a = [bos, *tokenizer(pair.clean, add_special_tokens=False)["input_ids"]]
        b = [bos, *tokenizer(pair.corrupted, add_special_tokens=False)["input_ids"]]
        if len(a) != len(b):
            raise TaskError(
                f"Pair {number}: the clean prompt is {len(a) - 1} tokens and the corrupted one {len(b) - 1}; "
                "patching lines them up position by position, so they must be equally long. "
                f"Clean: {pair.clean!r}; corrupted: {pair.corrupted!r}."
            )
        if clean and len(a) != len(clean[0]):
            raise TaskError(
                f"Pair {number} is {len(a) - 1} tokens but pair 1 is {len(clean[0]) - 1}; patching scores "
                "positions across pairs, so give prompts of one length (or run them as separate tasks)."
            )
        clean.append(a)
        corrupted.append(b)
        answers.append([_answer_id(tokenizer, t, number) for t in pair.answers])
        wrong.append([_answer_id(tokenizer, t, number) for t in pair.wrong])
    if not clean:
        raise TaskError(f"Task '{task.name}' has no prompt pairs.")
    tokens = [["<bos>"] + [tokenizer.decode([i]) for i in ids[1:]] for ids in clean]
    return TokenizedTask(task, torch.tensor(clean), torch.tensor(corrupted), _padded(answers), _padded(wrong), tokens)
