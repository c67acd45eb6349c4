"""The splits of a run with a topic head: the main data set and the topic data set, side by side.

Topic labels get the ``topic:`` prefix (see :mod:`toolchain.tasks.joint`), so one label list names
every output column and each example says by its label which head it trains. The main training set
can be repeated (``topic.main_repeat``) to balance a small main set against a large topic set; the
Trainer shuffles the union, so batches mix both data sets and every step trains both heads.
"""
from __future__ import annotations

from dataclasses import replace

from toolchain.core.config import RunConfig
from toolchain.data.dataset import Splits, label_list, load_splits
from toolchain.data.readers import DataError
from toolchain.tasks.joint import TOPIC_PREFIX, joint_labels


def topic_data_config(cfg: RunConfig):
    t = cfg.topic
    return replace(cfg.data, train=t.train, dev=t.dev, test=t.test, format=t.format, text_column=t.text_column,
                   label_column=t.label_column)


def _prefixed(examples: list) -> list:
    return [replace(ex, label=TOPIC_PREFIX + ex.label) for ex in examples]


def load_run_splits(cfg: RunConfig) -> Splits:
    """train/dev/test of the run: the main data set's, plus the topic data set's when a topic head is set."""
    main = load_splits(cfg.data)
    if not cfg.topic.train:
        return main
    check_main_labels(main)
    topic = load_splits(topic_data_config(cfg))
    files = dict(main.files)
    files.update({f"topic.{role}": info for role, info in topic.files.items()})
    return Splits(main.train * cfg.topic.main_repeat + _prefixed(topic.train), main.dev + _prefixed(topic.dev),
                  main.test + _prefixed(topic.test), files)


def check_main_labels(main: Splits) -> None:
    """Every main-task example (train, dev and test, not only the first) is refused, naming its file:line, when its
    label starts with the ``topic:`` prefix: it would silently be trained (and scored) as a topic class."""
    for ex in (*main.train, *main.dev, *main.test):
        if isinstance(ex.label, str) and ex.label.startswith(TOPIC_PREFIX):
            raise DataError(f"{ex.location}: main-head label {ex.label!r} starts with {TOPIC_PREFIX!r}, which marks "
                            f"topic classes; rename it")


def run_labels(cfg: RunConfig, splits: Splits) -> list[str]:
    """The label list: the main classes, then the topic classes (each head's sorted), contiguous."""
    labels = label_list(splits.train)
    if not cfg.topic.train:
        return labels
    topic = [label[len(TOPIC_PREFIX):] for label in labels if label.startswith(TOPIC_PREFIX)]
    return joint_labels([label for label in labels if not label.startswith(TOPIC_PREFIX)], topic)
