"""`toolchain monitor INPUT... --url URL --state FILE`: stream news items to the service (see
:mod:`toolchain.monitor` for what it does; this module is its CLI handler)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from toolchain.commands.options import DeprecatedAlias
from toolchain.monitor import KEY_ENV, URL_ENV, check_url, read_key, show, warn


EPILOG = ("Items: one JSON object per line, {\"text\": ..., \"source\": ..., \"timestamp\": ..., \"id\": ...}; only text "
          "is required; source (ticker, desk, publisher; former name: topic) goes to the service as the request's "
          "source. The rolling tables show sentiment shares over the last --window items of each predicted topic "
          "(when the served model has a topic head) and of each source. At the end, the topics whose negative share "
          "rose most are named: the first half of each topic's items this run against the second half (a topic needs "
          "10 items in each half).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL file, folder of *.jsonl files, or - (stdin)")
    p.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:3000"),
                   help=f"service base address (default: ${URL_ENV} or http://127.0.0.1:3000); https:// unless "
                        "the host is loopback")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow a plain http:// --url to a host other than loopback (the API key and the news "
                        "then travel unencrypted)")
    p.add_argument("--api-key-file", type=Path, help=f"file holding the API key (default: ${KEY_ENV})")
    p.add_argument("--state", type=Path, help="state file of the durable position (without it a restart "
                   "starts from the beginning)")
    p.add_argument("--source", metavar="NAME",
                   help="source (ticker, desk, publisher) of items that carry none: sent as the request's `source`, "
                        "a metric label at the service")
    p.add_argument("--topic", dest="source", metavar="NAME", action=DeprecatedAlias, replacement="--source")
    p.add_argument("--pattern", default="*.jsonl", help="file names read in a folder")
    p.add_argument("--follow", action="store_true", help="keep reading a file as it grows (like tail -f)")
    p.add_argument("--once", action="store_true", help="folders: stop when the files present are read")
    p.add_argument("--batch-size", type=int, default=32, help="items per batch (at most the service's "
                   "TOOLCHAIN_MAX_BATCH_ITEMS)")
    p.add_argument("--flush-seconds", type=float, default=1.0, help="send a partial batch after this long")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="pause between looks for new lines")
    p.add_argument("--table-every", type=float, default=10.0, help="seconds between tables (0: only at the end)")
    p.add_argument("--window", type=int, default=200, help="items per predicted topic (and per source) in the "
                   "rolling tables")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=0, help="give up after this many attempts of one request "
                   "(0: no limit but --give-up-after)")
    p.add_argument("--give-up-after", type=float, default=600.0,
                   help="seconds of failed attempts of one request after which the feeder stops, its position "
                        "kept (0: never)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest pause between retries, seconds")
    p.add_argument("--uncertain", choices=("resend", "skip"), default="resend",
                   help="after a hard kill, the request that was in flight: resend it with its Idempotency-Key "
                        "(exactly once with a service that honours the key, else at least once) or skip it (at "
                        "most once)")
    p.add_argument("--predictions", type=Path, help="append each prediction as JSONL to this file: file, line, id, "
                   "news_source, label, score, predicted_topic and predicted_topic_score (exactly once; the feeder "
                   "must be its only writer; the former keys source, topic and topic_score are written too until the "
                   "next release)")
    p.add_argument("--bad-lines", type=Path, help="also append each bad line's file, line and reason here "
                   "(exactly once)")
    p.add_argument("--no-mask", action="store_true", help="write texts to --predictions, --bad-lines and the "
                   "reports as they are (default: e-mail addresses, phone, card, IBAN and account numbers are "
                   "masked, e.g. [EMAIL]; the service always gets the texts as they are)")


def run(args) -> int:
    from toolchain.core.errors import ConfigError
    from toolchain.monitor.client import GaveUp, MonitorError
    from toolchain.monitor.state import StateError

    try:   # a bad option, URL, key, state file or input: a user error (the CLI prints it, exit 2)
        feeder, client = build(args)
    except (MonitorError, StateError, FileNotFoundError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    restore = _install_stop_handlers(feeder.stop)
    try:
        feeder.run()
    except MonitorError as exc:   # the service refused the key, answered 404, redirects: the user must fix it
        raise ConfigError(str(exc)) from exc
    except GaveUp as exc:   # not a user error: the service stayed unreachable; the position is kept
        where = (f"the position is saved in {args.state}: a restart resumes there" if args.state else
                 "but without --state a restart reads every input from the start")
        print(f"toolchain monitor: gave up: {exc}; nothing unacknowledged was committed, {where}", file=sys.stderr)
        return 1
    finally:
        client.close()
        restore()
    state = feeder.state
    uncertain = f"; {state.uncertain_items} items in doubt not resent" if state.uncertain_items else ""
    uncertain += f"; {client.replayed} answers replayed by the service (Idempotency-Key)" if client.replayed else ""
    rising = feeder.table.summary()
    if rising:
        print(rising, flush=True)
    print(f"sent {feeder.sent_this_run} items this run ({state.sent_items} in all); {state.bad_lines} bad lines "
          f"skipped; {state.rejected_items} items rejected by the service; {client.retries} retries{uncertain}",
          flush=True)
    return 0


def build(args):
    """The feeder and its client from the parsed arguments; validates them first."""
    from toolchain.monitor.client import Backoff, ServiceClient
    from toolchain.monitor.feeder import FeedOptions, Feeder
    from toolchain.monitor.inputs import open_input
    from toolchain.monitor.state import FeedState
    from toolchain.monitor.table import RollingShare

    _check_numbers(args)
    check_url(args.url, args.allow_insecure_http)
    if args.state is None:
        warn("no --state given: the position is not saved, a restart reads every input from the start")
    state = FeedState.load(args.state)
    resume = state.resume_positions()
    inputs = [open_input(spec, resume, args.pattern, args.follow or (Path(spec).is_dir() and not args.once), warn)
              for spec in args.inputs]
    stop = threading.Event()
    backoff = Backoff(max_s=args.backoff_max, max_attempts=args.max_retries, give_up_after_s=args.give_up_after)
    client = ServiceClient(args.url, read_key(args.api_key_file), args.timeout, backoff, stop, warn)
    options = FeedOptions(args.batch_size, args.flush_seconds, args.poll_seconds, args.table_every, args.uncertain,
                          args.source, mask=not args.no_mask)
    feeder = Feeder(inputs, client, state, args.state, options, RollingShare(args.window), warn, show, stop,
                    args.predictions, args.bad_lines)
    return feeder, client


def _check_numbers(args) -> None:
    for name in ("batch_size", "window"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("flush_seconds", "poll_seconds", "timeout", "backoff_max"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("max_retries", "table_every", "give_up_after"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("predictions", "bad_lines", "state"):
        path = getattr(args, name)
        if path is not None and not path.resolve().parent.is_dir():
            raise ValueError(f"--{name.replace('_', '-')} {path}: the folder {path.resolve().parent} does not exist")
    from toolchain.monitor.inputs import MAX_SOURCE_CHARS

    if args.source is not None and len(args.source) > MAX_SOURCE_CHARS:
        raise ValueError(f"--source has {len(args.source)} characters; the service takes at most {MAX_SOURCE_CHARS}")


def _install_stop_handlers(stop: threading.Event):
    """SIGTERM/SIGINT finish the batch in hand, then stop; a second SIGINT interrupts at once."""
    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        warn(f"{signal.Signals(signum).name}: finishing the current batch, then stopping")
        stop.set()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]
