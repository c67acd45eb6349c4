"""The unlabeled corpus of `toolchain pretrain`: documents, held-out split, fixed-length blocks, masking."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

from toolchain.data.readers import DataError


def read_corpus(path: str | Path, max_documents: int = 0) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one document or sentence a line); for a ``.jsonl`` file, the
    ``text`` field of each record (any label is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (pre-training needs a text file, one document a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid utf-8 text (byte {exc.start})") from None
    if path.suffix == ".jsonl":
        lines = [_jsonl_text(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    documents = [line.strip() for line in lines if line.strip()]
    if max_documents:
        documents = documents[:max_documents]
    if not documents:
        raise DataError(f"{path}: holds no text")
    return documents


def _jsonl_text(path: Path, number: int, line: str) -> str:
    import json

    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{path}:{number}: a record needs a string field 'text'")
    return record["text"]


def split_paths(spec: str) -> list[str]:
    """A comma-separated list of paths (``${data}`` expanded)."""
    from toolchain.core.config import expand_data_path

    return [expand_data_path(part.strip()) for part in spec.split(",") if part.strip()]


def read_corpora(spec: str, max_documents: int = 0) -> list[str]:
    """The documents of every file of a comma-separated list, in order."""
    documents = [doc for path in split_paths(spec) for doc in read_corpus(path)]
    return documents[:max_documents] if max_documents else documents


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def drop_excluded(documents: list[str], spec: str | None) -> tuple[list[str], int]:
    """Documents that are not one of the excluded files' texts (whitespace and case ignored): test sentences
    never reach pre-training. Returns (kept, dropped count)."""
    if not spec:
        return documents, 0
    excluded = {normalized(text) for path in split_paths(spec) for text in read_corpus(path)}
    kept = [doc for doc in documents if normalized(doc) not in excluded]
    return kept, len(documents) - len(kept)


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) documents; the held-out ones are drawn at random (seeded), at least one when
    ``fraction`` > 0 and there are two documents or more."""
    if not fraction or len(documents) < 2:
        return documents, []
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    held = set(order[: min(max(1, round(len(documents) * fraction)), len(documents) - 1)])
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


# The key DataCollatorForWholeWordMask reads for the positions of tokens that continue a word (named for its
# first use, Chinese word segmentation); without it the collator knows only WordPiece's '##' continuations.
CONTINUATION_KEY = "chinese_ref"


def chunk_blocks(tokenizer, documents: list[str], max_length: int, min_block: int,
                 mark_words: bool = False) -> list[dict]:
    """Tokenize documents and cut each into blocks of at most ``max_length`` tokens (special tokens
    included). A document's short tail is dropped when under ``min_block`` tokens, unless it is the
    whole document. ``mark_words``: each block also lists the positions of the tokens that continue a word (the
    tokenizer's own word split), for whole-word masking with any tokenizer (BPE's and SentencePiece's pieces carry
    no '##')."""
    size = max_length - tokenizer.num_special_tokens_to_add()
    blocks = []
    for start in range(0, len(documents), 64):
        encoded = tokenizer(documents[start:start + 64], add_special_tokens=False, verbose=False)
        for index, ids in enumerate(encoded["input_ids"]):
            words = encoded.word_ids(index) if mark_words else None
            for offset in range(0, len(ids), size):
                piece = ids[offset:offset + size]
                if len(piece) >= min_block or offset == 0:
                    block = {"input_ids": tokenizer.build_inputs_with_special_tokens(piece)}
                    if mark_words:
                        block[CONTINUATION_KEY] = continuations(block["input_ids"], piece, words[offset:offset + size])
                    blocks.append(block)
    return blocks


def continuations(block: list[int], piece: list[int], words: list[int | None]) -> list[int]:
    """Positions in ``block`` (``piece`` with special tokens around it) of the tokens of the same word as the
    token before them."""
    first = next(i for i in range(len(block) - len(piece) + 1) if block[i:i + len(piece)] == piece)
    return [first + j for j in range(1, len(piece)) if words[j] is not None and words[j] == words[j - 1]]


def masking_collator(tokenizer, probability: float, whole_word: bool, seed: int | None = None):
    """Random-token masking, or whole-word masking (every piece of a chosen word is masked; the blocks must come
    from ``chunk_blocks(..., mark_words=True)``)."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorForWholeWordMask

    if whole_word:
        # its warning for tokenizers other than BERT's assumes the '##' convention; the blocks mark the words
        warnings.filterwarnings("ignore", message="DataCollatorForWholeWordMask is only suitable for BertTokenizer")
        return DataCollatorForWholeWordMask(tokenizer, mlm_probability=probability, seed=seed)
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed)
