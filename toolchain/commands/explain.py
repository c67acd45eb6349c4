"""`toolchain explain RUN_DIR|EXPORT_DIR "text" ... [--file texts.jsonl] [--target LABEL] [--json [OUT]]
[--html OUT] [--png OUT]`: which words drove a prediction (see toolchain/explain/).

``--json`` is declared by :mod:`toolchain.commands.options`; the explain stage writes it (``-``: stdout, the
terminal view then left out), since the JSON is built from its results and the model it names."""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_json_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    parse_intermixed(p)
    p.add_argument("path", metavar="RUN_DIR|EXPORT_DIR", help="a run dir (toolchain train) or an export dir")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to explain")
    p.add_argument("--file", help="JSONL file of texts: {\"text\": ...} per line (other fields ignored)")
    p.add_argument("--target", metavar="LABEL", help="class to explain (default: the predicted one); for NER, "
                   "explain only the entities of this type")
    p.add_argument("--method", default="ig", choices=("ig", "occlusion"),
                   help="ig: integrated gradients on the fp32 PyTorch model (default); occlusion: leave one word "
                        "out on an export's ONNX variant, as POST /explain does")
    p.add_argument("--variant", help="occlusion: the ONNX variant (default: the export's serve variant)")
    p.add_argument("--steps", type=int, default=50, help="ig: quadrature points to start with (default 50); "
                   "doubled until the scores add up to the logit change within tolerance")
    p.add_argument("--max-steps", type=int, default=400, help="ig: most quadrature points (default 400)")
    add_json_option(p, "the explanations")
    p.add_argument("--html", dest="html_out", metavar="OUT", help="write an HTML page of the explanations")
    p.add_argument("--png", dest="png_out", metavar="OUT", help="write a PNG picture of the explanations")
    p.add_argument("--color", dest="colour", default="auto", choices=("auto", "always", "never"),
                   help="colour the terminal view (auto: when stdout is a terminal)")


def parse_intermixed(p: argparse.ArgumentParser) -> None:
    """Let texts come after options too (``explain DIR --target negative "text"``): plain argparse takes the
    positionals in one go, so a text after an option would be refused. The sub-parser parses intermixed
    (argparse's own ``parse_known_intermixed_args``, which calls ``parse_known_args`` again inside)."""
    plain, busy = p.parse_known_args, []

    def parse_known_args(args=None, namespace=None):
        if busy:
            return plain(args, namespace)
        busy.append(True)
        try:
            return p.parse_known_intermixed_args(args, namespace)
        finally:
            busy.clear()

    p.parse_known_args = parse_known_args


def run(args) -> int:
    from toolchain.explain.run import ExplainOptions, run_explain

    run_explain(ExplainOptions(path=args.path, texts=args.texts, file=args.file, target=args.target,
                               method=args.method, variant=args.variant, steps=args.steps, max_steps=args.max_steps,
                               json_out=args.json, html_out=args.html_out, png_out=args.png_out,
                               colour=args.colour))
    return 0
