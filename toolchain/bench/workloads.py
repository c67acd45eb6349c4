"""What the benchmarks feed the models: real test sentences, fixed-length texts, the latency check's sentences.

A workload is a list of texts and the max length they are truncated to. Real sentences keep their
natural length distribution; fixed-length texts are cut so that every one is exactly ``length``
tokens after tokenization (special tokens included), whatever the batch.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

REAL_TEST = "financial_phrasebank/splits/allagree/test.jsonl"

# Written for the latency check (no data set is needed in CI): finance news in the style and length range of
# the PhraseBank, each with a sentiment label so that the latency check can train its quick model on them.
LATENCY_CHECK_SENTENCES = [
    ("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .", "positive"),
    ("Net sales decreased by 9 % to EUR 212 million , and the company expects demand to stay weak .", "negative"),
    ("The annual general meeting will be held in Helsinki on Thursday 24 March .", "neutral"),
    ("The group 's order backlog grew by a third , driven by strong demand for paper machines in Asia .", "positive"),
    ("Shares fell sharply after the retailer warned that its full-year result would be clearly below last "
     "year 's level because of falling volumes and higher raw material costs .", "negative"),
    ("The company has some 1,200 employees in 14 countries .", "neutral"),
    ("Pre-tax profit more than doubled to EUR 4.6 mn .", "positive"),
    ("The bank cut 300 jobs as its loan losses widened in the third quarter .", "negative"),
    ("The contract covers the delivery of two cranes to the port of Gdansk , and deliveries are scheduled "
     "to take place during the first half of next year .", "neutral"),
    ("Earnings per share were EUR 0.42 , up from EUR 0.31 a year earlier , beating analysts ' forecasts .",
     "positive"),
    ("Operating loss totalled EUR 5.2 mn , compared to a profit of EUR 1.4 mn in the previous year .", "negative"),
    ("The transaction is expected to be completed by the end of June .", "neutral"),
    ("Comparable net sales increased by 12 % in local currencies , with every business area growing and "
     "the services unit reporting record order intake for the quarter .", "positive"),
    ("The airline lowered its guidance and said passenger numbers dropped 8 % in May .", "negative"),
    ("The new plant will be located in Tampere , and it will employ about 150 people when it starts "
     "production at the beginning of 2009 .", "neutral"),
    ("Sales rose .", "positive"),
    ("Profit warning : the steel maker now sees a loss for the year .", "negative"),
    ("The report is available on the company 's website in Finnish and English .", "neutral"),
    ("The mobile operator gained market share in all three Baltic countries , and its subscriber base "
     "grew to 2.1 million by the end of September , the highest figure in its history .", "positive"),
    ("Net profit fell to EUR 3.0 mn from EUR 7.5 mn as costs increased .", "negative"),
    ("The chief executive will present the results at a news conference at 11 am local time .", "neutral"),
    ("Cash flow from operations improved markedly , and net debt was reduced to EUR 45 million .", "positive"),
    ("Revenue from the paper segment declined for the fifth consecutive quarter , and the mill in Kemi "
     "will be closed temporarily because of weak demand and high wood prices .", "negative"),
    ("The shares will be listed on the Helsinki Stock Exchange .", "neutral"),
]


@dataclass
class Workload:
    name: str
    texts: list[str]
    max_length: int
    token_counts: list[int]   # tokens of each text as the model sees it (special tokens, truncation)


def read_real_sentences(data_root: Path | None) -> list[str]:
    if data_root is None or not (data_root / REAL_TEST).exists():
        where = data_root / REAL_TEST if data_root else REAL_TEST
        raise FileNotFoundError(f"real test sentences not found at {where}; set TOOLCHAIN_DATA_DIR to the folder "
                                "holding financial_phrasebank/")
    lines = (data_root / REAL_TEST).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def token_counts(tokenizer, texts: list[str], max_length: int) -> list[int]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


def real_workload(name: str, tokenizer, texts: list[str], max_length: int) -> Workload:
    return Workload(name, list(texts), max_length, token_counts(tokenizer, texts, max_length))


def fixed_length_workload(tokenizer, sentences: list[str], length: int, count: int = 64) -> Workload:
    """``count`` texts of exactly ``length`` tokens: windows of the joined sentences at evenly spread
    starts, cut one token past the length (truncation then makes every text exactly ``length`` long)."""
    if not sentences:
        raise ValueError("fixed_length_workload needs at least one sentence")
    joined = " ".join(sentences)
    offsets = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    while len(offsets) < 2 * length:
        joined = f"{joined} {joined}"
        offsets = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    room = len(offsets) - length + 1            # possible start pieces of a window
    stride, texts = max(1, room // count), []
    for i in range(count):
        for shift in range(16):                 # a window cut inside a word may re-tokenize shorter: move on
            start = (i * stride + shift) % room
            text = joined[offsets[start][0]:offsets[start + length - 2][1]]   # length - 1 pieces + 2 specials
            if token_counts(tokenizer, [text], length)[0] == length:
                texts.append(text)
                break
        else:
            raise ValueError(f"fixed-length workload: no window of {length} tokens near piece {i * stride}")
    return Workload(f"fixed-{length}", texts, length, [length] * len(texts))

def sentence_batches(workload: Workload, batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` batches of ``batch_size`` texts drawn without replacement (cycling) in a seeded order."""
    order = list(range(len(workload.texts)))
    random.Random(seed).shuffle(order)
    batches = []
    for i in range(count):
        picked = [order[(i * batch_size + j) % len(order)] for j in range(batch_size)]
        batches.append({"texts": [workload.texts[k] for k in picked], "max_length": workload.max_length,
                        "tokens": sum(workload.token_counts[k] for k in picked)})
    return batches
