"""Tiny random-initialised encoders of five families, each with its own tokenizer class trained here.

``build_family(name, path)`` writes a base-model folder (``config.json``, ``model.safetensors``, tokenizer files,
all through ``save_pretrained``) for one of ``FAMILIES``: 2 layers, hidden 32, 4 heads, FFN 64, and a vocabulary
of a few hundred pieces trained with the ``tokenizers`` library on the tests' own sentences (sentiment, NER,
update and pre-training texts), so every word the tests use is covered by pieces of its own tokenizer:

- ``bert``: WordPiece -> BertTokenizerFast
- ``roberta``: byte-level BPE -> RobertaTokenizerFast
- ``distilbert``: WordPiece -> DistilBertTokenizerFast
- ``mpnet``: WordPiece (MPNet's special tokens) -> MPNetTokenizerFast (no token_type_ids)
- ``deberta-v2``: Unigram (SentencePiece-style) -> DebertaV2TokenizerFast; relative attention on
"""
from __future__ import annotations

import string
from pathlib import Path

from conftest import FILLER, NEGATIVE, NEUTRAL, POSITIVE, make_ner_sentences, make_sentences

FAMILIES = ("bert", "roberta", "distilbert", "mpnet", "deberta-v2")
SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
MAX_POSITIONS = 128
# new wording for `toolchain update` (the parent's classes said by other publishers)
NEW_POSITIVE = ["outlook upgraded", "margins widened", "orders surged", "dividend raised"]
NEW_NEGATIVE = ["outlook cut", "margins shrank", "orders slumped", "dividend suspended"]
NEW_NEUTRAL = ["the filing lists", "the agenda covers", "the desk noted", "the venue hosts"]
ALPHABET = list(string.ascii_letters + string.digits + string.punctuation)


def training_texts(n: int = 400) -> list[str]:
    """A few hundred sentences covering every word the family tests feed a model."""
    texts = [row["text"] for row in make_sentences(n // 2, seed=101)]
    texts += [" ".join(word for word, _ in sentence) for sentence in make_ner_sentences(n // 4, seed=102, long_every=3)]
    phrases = POSITIVE + NEGATIVE + NEUTRAL + NEW_POSITIVE + NEW_NEGATIVE + NEW_NEUTRAL
    texts += [f"{a} {b} ." for a in phrases for b in FILLER][: n // 4]
    return texts + ["".join(ALPHABET)]


def wordpiece_vocab(path: Path, special: list[str], unk: str, lowercase: bool) -> Path:
    """A WordPiece vocabulary (special tokens first, in the given order) trained on ``training_texts``."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=lowercase, unk_token=unk)
    tokenizer.train_from_iterator(training_texts(), vocab_size=400, min_frequency=1, special_tokens=special,
                                  initial_alphabet=ALPHABET, limit_alphabet=200)
    path.mkdir(parents=True, exist_ok=True)
    return Path(tokenizer.save_model(str(path))[0])


def bert_tokenizer(work: Path):
    from transformers import BertTokenizerFast

    vocab = wordpiece_vocab(work, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", lowercase=True)
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def distilbert_tokenizer(work: Path):
    from transformers import DistilBertTokenizerFast

    vocab = wordpiece_vocab(work, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", lowercase=True)
    return DistilBertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def mpnet_tokenizer(work: Path):
    from transformers import MPNetTokenizerFast

    vocab = wordpiece_vocab(work, ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], "[UNK]", lowercase=True)
    return MPNetTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def roberta_tokenizer(work: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(training_texts(), vocab_size=600, min_frequency=1,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    work.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer.save_model(str(work))
    return RobertaTokenizerFast(vocab_file=vocab, merges_file=merges)


def deberta_v2_tokenizer(work: Path):
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import DebertaV2TokenizerFast

    special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator(training_texts(), vocab_size=400, special_tokens=special, unk_token="[UNK]",
                                  initial_alphabet=ALPHABET)
    ids = {token: tokenizer.token_to_id(token) for token in special}
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return DebertaV2TokenizerFast(tokenizer_object=tokenizer._tokenizer, bos_token="[CLS]", eos_token="[SEP]",
                                  unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                                  mask_token="[MASK]", do_lower_case=False)


def family_config(name: str, tokenizer):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, MPNetConfig, RobertaConfig

    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if name == "bert":
        return BertConfig(**SIZE, **ids, max_position_embeddings=MAX_POSITIONS)
    if name == "roberta":   # positions start after the padding index, as in roberta-base
        return RobertaConfig(**SIZE, **ids, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if name == "distilbert":
        return DistilBertConfig(vocab_size=ids["vocab_size"], pad_token_id=ids["pad_token_id"], dim=32, n_layers=2,
                                n_heads=4, hidden_dim=64, max_position_embeddings=MAX_POSITIONS)
    if name == "mpnet":
        return MPNetConfig(**SIZE, **ids, max_position_embeddings=MAX_POSITIONS + 2, relative_attention_num_buckets=32,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if name == "deberta-v2":   # DeBERTa-v3 layout: disentangled relative attention, no absolute positions
        return DebertaV2Config(**SIZE, **ids, max_position_embeddings=MAX_POSITIONS, relative_attention=True,
                               position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, share_att_key=True, norm_rel_ebd="layer_norm",
                               type_vocab_size=0)
    raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")


TOKENIZERS = {"bert": bert_tokenizer, "roberta": roberta_tokenizer, "distilbert": distilbert_tokenizer,
              "mpnet": mpnet_tokenizer, "deberta-v2": deberta_v2_tokenizer}


def build_family(name: str, path: Path) -> Path:
    """A tiny random-initialised base model of family ``name`` with its own tokenizer, saved in ``path``."""
    import torch
    from transformers import AutoModel

    if name not in TOKENIZERS:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    path = Path(path)
    tokenizer = TOKENIZERS[name](path.parent / f"{path.name}-vocab")
    torch.manual_seed(0)
    model = AutoModel.from_config(family_config(name, tokenizer))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
