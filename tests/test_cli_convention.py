"""One CLI convention for every verb, checked on the parsers themselves (``cli.parser(verb)``):

- ``--output/-o DIR`` on every verb that writes an artifact dir (``--out`` only as export's deprecated alias);
- ``--json [PATH]`` (nargs='?') on every verb that prints a result: stdout without PATH, else the file;
- ``--resume [RUN_DIR]`` with one shape wherever it exists (train, pretrain, update);
- ``key=value`` overrides anywhere after the verb, for every verb that takes them; refused by the others;
- exit codes from ``cli.main`` for every verb: 2 a user error, 1 a failed check, 130 interrupted.

The verb x option table in README.md ("CLI conventions") is rendered here from the parsers
(:func:`convention_rows`) and must match, so the two cannot drift:

| verb | `--output/-o DIR` | `--json [PATH]` | `--resume [RUN_DIR]` | `key=value` | exit 1 |
|---|---|---|---|---|---|
| train | yes | - | yes | yes | - |
| update | yes | - | yes | yes | over its forgetting limit (kept, not promotable) |
| tune | yes | - | - | yes | - |
| evaluate | - | yes | - | - | - |
| compare | - | yes | - | - | - |
| ensemble | - | yes | - | - | - |
| explain | - | yes | - | - | - |
| config | - | yes | - | yes | - |
| export | yes | yes | - | yes | the accuracy gate failed |
| build | - | yes | - | yes | an export's accuracy gate failed |
| serve | - | - | - | - | (the server's own exit code) |
| monitor | - | - | - | - | gave up: the service stayed unreachable |
| predict | yes | yes | - | - | - |
| pretrain | yes | - | yes | yes | - |
| bench | - | latency-check | - | - | latency-check: a latency regression; a benchmark failed |
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from toolchain import cli
from toolchain.core.errors import CheckFailed, ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"

WRITES_ARTIFACT_DIR = {"train", "pretrain", "update", "tune", "export", "predict"}
PRINTS_RESULT = {"evaluate", "compare", "ensemble", "explain", "export", "build", "config", "bench", "predict"}
RESUMES = {"train", "pretrain", "update"}
TAKES_OVERRIDES = {"train", "pretrain", "update", "tune", "export", "build", "config"}
EXIT_ONE = {"export": "the accuracy gate failed", "build": "an export's accuracy gate failed",
            "update": "over its forgetting limit (kept, not promotable)",
            "serve": "(the server's own exit code)", "monitor": "gave up: the service stayed unreachable",
            "bench": "latency-check: a latency regression; a benchmark failed"}
# the arguments a verb needs before a trailing override can be parsed, then an option to put it after
REQUIRED = {"update": ["runs/parent", "--data", "new.jsonl"], "tune": ["--trials", "2"], "export": ["runs/x"],
            "evaluate": ["runs/x"], "compare": ["runs/x"], "ensemble": ["runs/x"], "explain": ["runs/x", "text"],
            "serve": ["exports/x"], "monitor": ["news.jsonl"], "bench": ["latency-check"],
            "predict": ["exports/x", "--input", "news.jsonl", "-o", "out"]}
FLAG = {"update": ["--dev", "dev.jsonl"], "tune": ["--timeout", "5"], "evaluate": ["--split", "dev"],
        "compare": ["--split", "dev"], "ensemble": ["--split", "dev"], "explain": ["--method", "ig"],
        "serve": ["--port", "3001"], "monitor": ["--window", "10"], "bench": ["--repeats", "1"],
        "predict": ["--shard-rows", "100"]}


def verb_parser(verb: str) -> argparse.ArgumentParser:
    return cli.parser(verb).verb_parsers[verb]


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands --help lists (a deprecated former name, such as ``bench gate``, is hidden)."""
    action = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
    if action is None:
        return {}
    listed = {choice.dest for choice in action._choices_actions}
    return {name: sp for name, sp in action.choices.items() if name in listed}


def option(p: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return p._option_string_actions.get(name)


def parse(argv: list[str]) -> argparse.Namespace:
    """What ``cli.main`` parses, without running the verb."""
    top = cli.parser(argv[0])
    args, extra = top.parse_known_args(argv)
    cli.collect_overrides(top, args, extra, argv)
    return args


def has(verb: str, name: str) -> str:
    """'yes'/'-' for a plain verb; for one with subcommands (bench) the subcommands that have the option."""
    p = verb_parser(verb)
    subs = subcommands(p)
    if subs:
        return ", ".join(s for s, sp in subs.items() if option(sp, name)) or "-"
    return "yes" if option(p, name) else "-"


def takes_overrides(verb: str) -> bool:
    return any(a.dest == "overrides" and not a.option_strings for a in verb_parser(verb)._actions)


def convention_rows() -> list[str]:
    rows = []
    for verb in cli.VERBS:
        cells = [has(verb, "--output"), has(verb, "--json"), has(verb, "--resume"),
                 "yes" if takes_overrides(verb) else "-", EXIT_ONE.get(verb, "-")]
        rows.append(f"| {verb} | " + " | ".join(cells) + " |")
    return rows


def test_readme_and_this_docstring_show_the_convention_table():
    rows = convention_rows()
    assert "\n".join(rows) in __doc__
    readme = README.read_text()
    assert "### CLI conventions" in readme
    assert "\n".join(rows) in readme, "README.md's CLI conventions table differs from the parsers:\n" + "\n".join(rows)


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_output_location_is_output_o(verb):
    p = verb_parser(verb)
    parsers = [p, *subcommands(p).values()]
    if verb in WRITES_ARTIFACT_DIR:
        action = option(p, "--output")
        assert action is not None and option(p, "-o") is action and action.dest == "output", verb
    for sp in parsers:   # --out survives only as a hidden, deprecated alias
        out = option(sp, "--out")
        assert out is None or out.help == argparse.SUPPRESS, f"{verb}: --out is visible"


def test_export_out_is_a_deprecated_alias(capsys):
    args = parse(["export", "runs/x", "--out", "exports/y", "prune.amount=0.3"])
    assert args.output == "exports/y" and args.overrides == ["prune.amount=0.3"]
    assert "--out is deprecated" in capsys.readouterr().err
    assert parse(["export", "runs/x", "-o", "exports/z"]).output == "exports/z"


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_json_takes_an_optional_path(verb):
    p = verb_parser(verb)
    found = [a for sp in (p, *subcommands(p).values()) if (a := option(sp, "--json"))]
    assert bool(found) == (verb in PRINTS_RESULT), verb
    for action in found:
        assert action.nargs == "?" and action.const == "-" and action.dest == "json", verb


def test_json_without_path_is_stdout_only_json(capsys, tmp_path):
    assert cli.main(["config", "--config", "sentiment-full", "--json", "train.epochs=2"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["train"]["epochs"] == 2 and "epochs: 2" in out.err   # YAML view went to stderr
    path = tmp_path / "presets.json"
    assert cli.main(["config", "--list", "--json", str(path)]) == 0
    out = capsys.readouterr()
    names = [p["name"] for p in json.loads(path.read_text())]
    assert "sentiment-full" in names and "sentiment-full" in out.out   # with PATH the table stays on stdout


def test_resume_has_one_shape():
    shapes = {verb: (option(verb_parser(verb), "--resume").nargs, option(verb_parser(verb), "--resume").const)
              for verb in cli.VERBS if option(verb_parser(verb), "--resume")}
    assert set(shapes) == RESUMES and set(shapes.values()) == {("?", True)}
    for verb in RESUMES:
        need = REQUIRED.get(verb, [])
        assert parse([verb, *need, "--resume"]).resume is True
        assert parse([verb, "--resume", "runs/old"]).resume == "runs/old"   # the old train/pretrain usage
        args = parse([verb, *need, "--resume", "train.epochs=2"])          # a flag, then an override
        assert args.resume is True and args.overrides == ["train.epochs=2"]


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_overrides_are_accepted_after_options(verb, capsys):
    required, flag = [verb, *REQUIRED.get(verb, [])], FLAG.get(verb, ["--config", "sentiment-full"])
    argv = [*required, *flag]
    if verb == "explain":   # takes no overrides; its texts may come anywhere, so a key=value is a text
        assert not takes_overrides(verb) and parse([*argv, "revenue=up"]).texts == ["text", "revenue=up"]
        return
    if verb not in TAKES_OVERRIDES:
        assert not takes_overrides(verb)
        assert cli.main([*argv, "train.epochs=2"]) == 2
        assert "key=value" in capsys.readouterr().err
        return
    assert takes_overrides(verb)
    assert parse([*argv, "train.epochs=2"]).overrides == ["train.epochs=2"]
    assert parse([*required, "a.b=1", *flag, "c.d=2"]).overrides == ["a.b=1", "c.d=2"]   # around an option, in order


def test_overrides_keep_their_order_around_positionals():
    args = parse(["export", "runs/x", "a.b=1", "--config", "export-default", "c.d=2", "--json", "e.f=3"])
    assert args.run_dir == "runs/x" and args.overrides == ["a.b=1", "c.d=2", "e.f=3"] and args.json == "-"
    assert parse(["config", "--config", "sentiment-full", "--options", "train.epochs=2"]).overrides == \
        ["train.epochs=2"]


def test_train_output_is_output_dir(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["config", "--config", "sentiment-full", "output_dir=" + out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_dir"] == out
    from toolchain.commands.options import with_output_dir

    assert with_output_dir(parse(["train", "--output", out, "train.epochs=2"])) == ["train.epochs=2",
                                                                                    f"output_dir={out}"]
    with pytest.raises(ConfigError, match="different dirs"):
        with_output_dir(parse(["train", "-o", out, "output_dir=elsewhere"]))


# -- exit codes ----------------------------------------------------------------------------------------

def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path / "nowhere")]) == 2           # a missing run dir
    err = capsys.readouterr().err
    assert err.startswith("toolchain compare: error: ") and "nowhere" in err and "Traceback" not in err
    assert cli.main(["config", "--config", "no-such-preset"]) == 2        # a bad preset
    assert cli.main(["export", "runs/x", "--no-such-option"]) == 2        # argparse
    assert cli.main(["tune", "--config", "sentiment-full"]) == 2          # a required option missing
    capsys.readouterr()
    assert cli.main(["monitor", str(tmp_path / "missing.jsonl")]) == 2    # monitor: no code of its own
    assert "toolchain monitor: error: " in capsys.readouterr().err
    assert cli.main(["bench", "latency-check", "--baseline", str(tmp_path / "none.json"), "--parts", "offline"]) == 2
    assert "toolchain bench: error: " in capsys.readouterr().err           # bench: no code of its own


@pytest.mark.parametrize("failure", ["check", "gate"])
def test_failed_checks_exit_1_on_stderr(failure, monkeypatch, capsys):
    import toolchain.commands.export as export_command
    from toolchain.export.accuracy_gate import GateError   # the former name of AccuracyGateError

    def failing(args):
        print("progress")
        raise CheckFailed("gate failed: int8 lost 3.1 points") if failure == "check" else GateError("int8: 3.1")

    monkeypatch.setattr(export_command, "run", failing)
    assert cli.main(["export", "runs/x"]) == 1
    out = capsys.readouterr()
    assert out.out == "progress\n" and out.err.startswith("toolchain export: check failed: ")


def test_latency_check_regression_is_a_failed_check_and_json_goes_to_stdout(monkeypatch, capsys):
    from toolchain.bench import latency_check_command

    def fake_check(args, update):
        print("ratio table")
        args.out.write_text(json.dumps({"verdict": [{"ratio": "int8_vs_fp32_b32", "result": "REGRESSION"}]}))
        return 1

    monkeypatch.setattr(latency_check_command, "run_latency_check", fake_check)
    assert cli.main(["bench", "latency-check", "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["verdict"][0]["result"] == "REGRESSION"
    assert "ratio table" in out.err and "toolchain bench: check failed: latency check" in out.err


def test_interrupt_exits_130(monkeypatch, capsys):
    import toolchain.commands.config as config_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config_command, "run", interrupted)
    assert cli.main(["config"]) == 130
    assert "interrupted" in capsys.readouterr().err
