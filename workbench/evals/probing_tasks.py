"""Labelled tasks for sparse probing, built offline from text that ships with Python, and SAEBench's datasets by name.

Every built-in task reads one pool of chunks, each `chunk_tokens` tokens after a BOS:
- prose: the Python documentation's topics (`pydoc_data.topics`, the text `help("topics")` shows), each topic's text
  tokenised and cut into consecutive chunks;
- code: the running Python's standard-library sources (the modules in CODE_MODULES), cut the same way.

Tasks (1 = positive):
- `code_vs_prose` (sequence): a code chunk against a documentation chunk;
- `topic:<name>` (sequence): a documentation chunk from that topic against one from any other topic, for the four
  largest topics (TOPICS);
- `digit_tokens`, `keyword_tokens`, `punctuation_tokens` (token): a token of the pool whose text is digits, a Python
  keyword, or punctuation only, against any other token of the pool.
A sequence task's example is the mean over the chunk's tokens (BOS left out), as SAEBench pools; a token task's is the
activation at that token. Positives and negatives are sampled to equal numbers, seeded.

SAEBench's own datasets (`bias_in_bios_class_set1`, `ag_news`, ...) load by name through `datasets` when a network
exists: one one-vs-rest sequence task per class, SAEBench's classes.
"""

from __future__ import annotations

import keyword
import random
import string
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import EvaluationError

TOPICS = ("specialnames", "compound", "types", "formatstrings")
CODE_MODULES = (
    "argparse.py", "ast.py", "calendar.py", "configparser.py", "csv.py", "dataclasses.py", "difflib.py",
    "enum.py", "fractions.py", "functools.py", "inspect.py", "ipaddress.py", "json/decoder.py", "json/encoder.py",
    "logging/__init__.py", "pathlib.py", "pickle.py", "pprint.py", "shutil.py", "statistics.py", "string.py",
    "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "typing.py", "zipfile/__init__.py", "zipfile.py",
)  # fmt: skip
TOKEN_TASKS = {
    "digit_tokens": lambda text: text.strip().isdigit(),
    "keyword_tokens": lambda text: text.strip() in keyword.kwlist,
    "punctuation_tokens": lambda text: bool(text.strip()) and all(c in string.punctuation for c in text.strip()),
}
BUILT_IN = ("code_vs_prose", *(f"topic:{t}" for t in TOPICS), *TOKEN_TASKS)

# SAEBench's datasets (sae_bench_utils/dataset_info.py): HF id, text column, label column, the classes it probes.
SAEBENCH_DATASETS: dict[str, tuple[str, str, str, list]] = {
    "bias_in_bios_class_set1": ("LabHC/bias_in_bios", "hard_text", "profession", [0, 1, 2, 6, 9]),
    "bias_in_bios_class_set2": ("LabHC/bias_in_bios", "hard_text", "profession", [11, 13, 14, 18, 19]),
    "bias_in_bios_class_set3": ("LabHC/bias_in_bios", "hard_text", "profession", [20, 21, 22, 25, 26]),
    "ag_news": ("fancyzhx/ag_news", "text", "label", [0, 1, 2, 3]),
    "amazon_reviews_sentiment": ("canrager/amazon_reviews_mcauley_1and5", "text", "rating", [1.0, 5.0]),
}


@dataclass
class Chunk:
    ids: list[int]  # BOS first
    source: str  # code | prose
    topic: str  # the pydoc topic, or the module for code


@dataclass
class Task:
    name: str
    kind: str  # sequence | token
    positives: list[tuple[int, int]]  # (chunk, position); position -1 for a sequence task (mean over the chunk)
    negatives: list[tuple[int, int]]


def _chunks(tokenizer, text: str, source: str, topic: str, length: int, bos: int) -> list[Chunk]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [Chunk([bos, *ids[i : i + length]], source, topic) for i in range(0, len(ids) - length + 1, length)]


def chunk_pool(tokenizer, bos: int, length: int, max_code_chunks: int, seed: int) -> list[Chunk]:
    """Every documentation chunk, and a seeded sample of `max_code_chunks` standard-library code chunks."""
    from pydoc_data.topics import topics

    pool = []
    for topic, text in sorted(topics.items()):
        pool += _chunks(tokenizer, text, "prose", topic, length, bos)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = []
    for module in CODE_MODULES:
        if (stdlib / module).exists():
            code += _chunks(tokenizer, (stdlib / module).read_text(encoding="utf-8"), "code", module, length, bos)
    random.Random(seed).shuffle(code)
    return pool + code[:max_code_chunks]


def built_in_tasks(pool: list[Chunk], tokenizer, names: list[str], per_class: int, seed: int) -> list[Task]:
    """The named built-in tasks over the pool, each with at most `per_class` positives and as many negatives."""
    rng = random.Random(seed)
    tasks = []
    for name in names:
        if name == "code_vs_prose":
            positives = [(i, -1) for i, c in enumerate(pool) if c.source == "code"]
            negatives = [(i, -1) for i, c in enumerate(pool) if c.source == "prose"]
            kind = "sequence"
        elif name.startswith("topic:"):
            topic = name.split(":", 1)[1]
            positives = [(i, -1) for i, c in enumerate(pool) if c.source == "prose" and c.topic == topic]
            negatives = [(i, -1) for i, c in enumerate(pool) if c.source == "prose" and c.topic != topic]
            kind = "sequence"
        elif name in TOKEN_TASKS:
            is_positive = TOKEN_TASKS[name]
            texts = {}
            positives, negatives = [], []
            for i, chunk in enumerate(pool):
                for position, token_id in enumerate(chunk.ids[1:], start=1):
                    if token_id not in texts:
                        texts[token_id] = tokenizer.decode([token_id])
                    (positives if is_positive(texts[token_id]) else negatives).append((i, position))
            kind = "token"
        else:
            raise EvaluationError(
                f"Unknown probing task '{name}'. Built in: {', '.join(BUILT_IN)}; by name, with a network: "
                f"{', '.join(SAEBENCH_DATASETS)}."
            )
        n = min(per_class, len(positives), len(negatives))
        tasks.append(Task(name, kind, rng.sample(positives, n), rng.sample(negatives, n)))
    return tasks


def saebench_texts(name: str, per_class: int, seed: int) -> dict[object, list[str]]:
    """A SAEBench dataset's texts by class (`per_class` each), from the Hugging Face hub."""
    hub_id, text_column, label_column, classes = SAEBENCH_DATASETS[name]
    try:
        from datasets import load_dataset
    except ImportError:
        raise EvaluationError(
            f"Loading SAEBench's '{name}' needs the `datasets` package: pip install 'workbench[hub]'."
        ) from None
    try:
        rows = load_dataset(hub_id, split="train").shuffle(seed=seed)
    except Exception as error:  # the hub's errors have no common base: offline, missing, gated
        raise EvaluationError(
            f"Could not load {hub_id} from the Hugging Face hub ({type(error).__name__}: {error}). It needs a network "
            "(or the dataset in the HF cache); offline, use the built-in tasks: " + ", ".join(BUILT_IN) + "."
        ) from None
    by_class: dict[object, list[str]] = {c: [] for c in classes}
    for row in rows:
        label = row[label_column]
        if label in by_class and len(by_class[label]) < per_class:
            by_class[label].append(row[text_column])
        if all(len(v) >= per_class for v in by_class.values()):
            break
    return by_class
