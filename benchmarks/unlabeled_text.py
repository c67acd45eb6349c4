#!/usr/bin/env python3
"""Unlabeled in-domain texts for distillation (``distill.unlabeled``), from the shared data sets.

Three sources, each sampled (seeded) and deduplicated:

- **PhraseBank** sentences of the 50agree splits that are none of the excluded files' texts (by default
  the allagree train, dev and test splits: what ``sentiment-distill`` trains and is scored on);
- **FOMC minutes** (one document a line), cut into sentences of 8 to 60 words;
- **finance tweets** (``twitter_financial_news_topic/train.jsonl``; the topic labels are ignored), with their
  URLs removed;
- **SEntFiN train headlines** (``--sentfin N``, none by default; the labels are ignored): unlabeled text of the
  out-of-domain check's own domain, for unsupervised domain adaptation. SEntFiN's test texts are then excluded
  too, so the SEntFiN figure is still measured on texts never seen.

No written text equals an excluded text (compared with whitespace collapsed and case folded); the file is
read back and checked before the script reports success. The data stays outside the repository:

    python benchmarks/unlabeled_text.py                                   # runs/unlabeled-finance.jsonl
    python benchmarks/unlabeled_text.py --output runs/u.jsonl --fomc 2000 --tweets 2000 \\
        --exclude ../shared/data/financial_phrasebank/splits/50agree/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.core.config import data_root  # noqa: E402

ALLAGREE = "financial_phrasebank/splits/allagree"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
URL = re.compile(r"https?://\S+")


def normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def phrasebank_texts(root: Path) -> list[str]:
    splits = root / "financial_phrasebank" / "splits" / "50agree"
    return [text for split in ("train", "dev", "test") for text in jsonl_texts(splits / f"{split}.jsonl")]


def fomc_sentences(root: Path, min_words: int = 8, max_words: int = 60) -> list[str]:
    path = root / "fomc_minutes" / "fomc_minutes_1996_2024.one_doc_per_line.txt"
    sentences = []
    for document in path.read_text(encoding="utf-8").splitlines():
        for sentence in SENTENCE_END.split(document.strip()):
            if min_words <= len(sentence.split()) <= max_words:
                sentences.append(sentence.strip())
    return sentences


def tweet_texts(root: Path, min_words: int = 5) -> list[str]:
    texts = [" ".join(URL.sub(" ", text).split()) for text in
             jsonl_texts(root / "twitter_financial_news_topic" / "train.jsonl")]
    return [text for text in texts if len(text.split()) >= min_words]


def sentfin_texts(root: Path) -> list[str]:
    return jsonl_texts(root / "sentfin" / "train.jsonl")


def sample(texts: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` texts drawn without replacement (all of them for count < 0)."""
    return list(texts) if count < 0 or count >= len(texts) else rng.sample(texts, count)


def collect(root: Path, excluded: set[str], counts: dict[str, int], seed: int) -> list[dict]:
    """Records {text, source}, none of whose texts is excluded or repeated."""
    rng = random.Random(seed)
    sources = {"phrasebank": phrasebank_texts, "fomc": fomc_sentences, "tweets": tweet_texts, "sentfin": sentfin_texts}
    seen, records = set(excluded), []
    for name, read in sources.items():
        if counts[name] == 0:
            continue
        fresh = []
        for text in read(root):
            key = normalized(text)
            if key not in seen:
                seen.add(key)
                fresh.append(text)
        records += [{"text": text, "source": name} for text in sample(fresh, counts[name], rng)]
    return records


def verify(path: Path, excluded: set[str]) -> int:
    """Read the written file back: every line a text, none excluded, none repeated."""
    keys = [normalized(text) for text in jsonl_texts(path)]
    clash = [k for k in keys if k in excluded]
    if clash:
        raise SystemExit(f"{path}: {len(clash)} texts are excluded texts (e.g. {clash[0][:80]!r})")
    if len(set(keys)) != len(keys):
        raise SystemExit(f"{path}: {len(keys) - len(set(keys))} repeated texts")
    return len(keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=str(ROOT / "runs" / "unlabeled-finance.jsonl"))
    p.add_argument("--data", help="the shared data folder (default: TOOLCHAIN_DATA_DIR or ../shared/data)")
    p.add_argument("--exclude", nargs="*", help="jsonl files whose texts must not appear (default: the allagree "
                   "train, dev and test splits)")
    p.add_argument("--phrasebank", type=int, default=-1, help="PhraseBank sentences (-1 = every one not excluded)")
    p.add_argument("--fomc", type=int, default=3000, help="FOMC-minutes sentences")
    p.add_argument("--tweets", type=int, default=3000, help="finance tweets")
    p.add_argument("--sentfin", type=int, default=0, help="SEntFiN train headlines, labels ignored (-1 = all; "
                   "SEntFiN test texts are then excluded too)")
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args(argv)
    root = Path(args.data) if args.data else data_root()
    if root is None or not (root / "financial_phrasebank").is_dir():
        raise SystemExit(f"no shared data folder at {root}: pass --data DIR or set TOOLCHAIN_DATA_DIR")
    exclude = [Path(e) for e in args.exclude] if args.exclude else \
        [root / ALLAGREE / f"{split}.jsonl" for split in ("train", "dev", "test")]
    if args.sentfin:
        exclude.append(root / "sentfin" / "test.jsonl")
    excluded = {normalized(text) for path in exclude for text in jsonl_texts(path)}
    counts = {"phrasebank": args.phrasebank, "fomc": args.fomc, "tweets": args.tweets, "sentfin": args.sentfin}
    records = collect(root, excluded, counts, args.seed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    written = verify(out, excluded)
    by_source = {name: sum(r["source"] == name for r in records) for name in counts}
    print(f"{out}: {written} texts ({', '.join(f'{k} {v}' for k, v in by_source.items())}); none of the "
          f"{len(excluded)} texts of {', '.join(str(e) for e in exclude)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
