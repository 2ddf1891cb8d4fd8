"""Text in, fixed-length token contexts out, with every token traceable to its text.

A corpus spec is one of:
  default              the English prose of CPython's `pydoc_data.topics` (~460 KB, ships with Python)
  PATH.txt / .md       one document per file (a folder: every .txt/.md file in it)
  PATH.jsonl           one JSON object per line, text in `text_column`
  PATH.parquet         a table with a text column `text_column`
  hf:NAME[:CONFIG]     a Hugging Face dataset (needs network and the `datasets` package), split `train`

Documents are tokenized separately and concatenated; each context is
[BOS] + (context_len - 1) tokens, and a BOS also separates documents, so the
model never sees two documents run together without a boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import CorpusError


@dataclass(frozen=True)
class Document:
    doc_id: int
    source: str  # where it came from: file path, topic name, dataset row
    text: str


@dataclass
class TokenizedCorpus:
    """Parallel arrays, one entry per token, in context order (token_id = index)."""

    documents: list[Document]
    vocab_ids: np.ndarray  # int32 [n_tokens]
    doc_ids: np.ndarray  # int32, the document the token belongs to (-1 for a separator BOS)
    char_starts: np.ndarray  # int32, span of the token in its document's text
    char_ends: np.ndarray
    context_len: int

    @property
    def n_tokens(self) -> int:
        return len(self.vocab_ids)

    @property
    def n_contexts(self) -> int:
        return self.n_tokens // self.context_len

    def contexts(self) -> np.ndarray:
        return self.vocab_ids.reshape(self.n_contexts, self.context_len)


def _default_documents() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc_data.topics:{name}", topics[name]


def _file_documents(path: Path, text_column: str) -> Iterator[tuple[str, str]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md"))
        if not files:
            raise CorpusError(f"Folder {path} holds no .txt or .md files.")
        for file in files:
            yield str(file), file.read_text(encoding="utf-8", errors="replace")
    elif suffix in (".txt", ".md", ".text"):
        yield str(path), path.read_text(encoding="utf-8", errors="replace")
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path}:{line_number} is not valid JSON ({exc.msg}).") from exc
                if text_column not in record:
                    raise CorpusError(
                        f"{path}:{line_number} has no '{text_column}' field (fields: {', '.join(record)}); pass --text-column."
                    )
                yield f"{path}:{line_number}", str(record[text_column])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if text_column not in parquet.schema_arrow.names:
            raise CorpusError(
                f"{path} has no column '{text_column}' (columns: {', '.join(parquet.schema_arrow.names)}); pass --text-column."
            )
        row = 0
        for batch in parquet.iter_batches(columns=[text_column]):
            for text in batch.column(0).to_pylist():
                yield f"{path}#{row}", text or ""
                row += 1
    else:
        raise CorpusError(f"Unsupported corpus file type '{suffix}' for {path}: use .txt, .md, .jsonl or .parquet.")


def _hub_documents(name: str, text_column: str) -> Iterator[tuple[str, str]]:
    dataset_name, _, config = name.partition(":")
    try:
        import datasets

        stream = datasets.load_dataset(dataset_name, config or None, split="train", streaming=True)
        for row, record in enumerate(stream):
            yield f"hf:{name}#{row}", str(record[text_column])
    except ImportError as exc:
        raise CorpusError("Hugging Face datasets need the `datasets` package: pip install 'workbench[hub]'.") from exc
    except KeyError as exc:
        raise CorpusError(f"Dataset {dataset_name} has no column '{text_column}'; pass --text-column.") from exc
    except Exception as exc:
        raise CorpusError(
            f"Could not stream dataset '{dataset_name}' from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). "
            "Offline? Save the text as .txt/.jsonl/.parquet on a machine with network and pass that path as --corpus."
        ) from exc


def bos_token_id(tokenizer) -> int:
    """The token every context starts with: the tokenizer's BOS, or its EOS where it has no BOS (GPT-2 style
    tokenizers mark both boundaries with one token). Harvest, prompts and tasks all start with this one id, so a
    prompt typed later lines up with the contexts a dictionary was trained on."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise CorpusError("The tokenizer has neither a BOS nor an EOS token to start contexts with.")
    return bos


def is_bos_position(token_ids: np.ndarray, context_len: int) -> np.ndarray:
    """True for rows at position 0 of their context. A run's token_id is context * context_len + position
    (see harvest.py), so this needs no lookup in the tokens table."""
    return token_ids % context_len == 0


def corpus_label(spec: str) -> str:
    """A short name for a corpus spec, for default run names: 'default', 'hf:NAME', or a file's stem."""
    return spec if spec == "default" or spec.startswith("hf:") else Path(spec).stem


def iter_documents(spec: str, text_column: str = "text") -> Iterator[Document]:
    if spec == "default":
        raw = _default_documents()
    elif spec.startswith("hf:"):
        raw = _hub_documents(spec[3:], text_column)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise CorpusError(f"Corpus '{spec}' is not 'default', an 'hf:NAME' dataset, or an existing file or folder.")
        raw = _file_documents(path, text_column)
    doc_id = 0
    for source, text in raw:
        if text.strip():
            yield Document(doc_id, source, text)
            doc_id += 1


def tokenize_corpus(
    spec: str, tokenizer, n_tokens: int, context_len: int = 128, text_column: str = "text"
) -> TokenizedCorpus:
    """Tokenize documents until `n_tokens` (rounded up to whole contexts) are filled, or the corpus ends."""
    if context_len < 2:
        raise CorpusError("--context-len must be at least 2 (a BOS token and one text token).")
    bos = bos_token_id(tokenizer)
    n_contexts_wanted = -(-n_tokens // context_len)
    body = context_len - 1  # each context spends one slot on its BOS

    # The stream of body tokens (without the per-context BOS), as lists, then sliced into contexts.
    vocab: list[int] = []
    docs: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    documents: list[Document] = []
    for document in iter_documents(spec, text_column):
        if len(vocab) >= n_contexts_wanted * body:
            break
        encoded = tokenizer(document.text, add_special_tokens=False, return_offsets_mapping=True)
        if documents:  # separator between documents
            vocab.append(bos)
            docs.append(-1)
            starts.append(0)
            ends.append(0)
        documents.append(document)
        vocab.extend(encoded["input_ids"])
        docs.extend([document.doc_id] * len(encoded["input_ids"]))
        offsets = encoded["offset_mapping"]
        starts.extend(o[0] for o in offsets)
        ends.extend(o[1] for o in offsets)

    n_contexts = min(n_contexts_wanted, len(vocab) // body)
    if n_contexts == 0:
        raise CorpusError(
            f"Corpus '{spec}' yields {len(vocab)} tokens, fewer than one context of {context_len}. "
            "Give a larger corpus or a smaller --context-len."
        )

    def with_bos(values: list[int], bos_value: int) -> np.ndarray:
        grid = np.asarray(values[: n_contexts * body], dtype=np.int32).reshape(n_contexts, body)
        return np.concatenate([np.full((n_contexts, 1), bos_value, dtype=np.int32), grid], axis=1).ravel()

    used_docs = {d for d in docs[: n_contexts * body] if d >= 0}
    return TokenizedCorpus(
        documents=[d for d in documents if d.doc_id in used_docs],
        vocab_ids=with_bos(vocab, bos),
        doc_ids=with_bos(docs, -1),
        char_starts=with_bos(starts, 0),
        char_ends=with_bos(ends, 0),
        context_len=context_len,
    )
