"""`toolchain explain`: read the texts, explain each with the chosen method, show and write the results."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from toolchain.explain.result import Explanation, ExplainError, check_text

METHODS = ("ig", "occlusion")


@dataclass
class ExplainOptions:
    path: str                        # run dir or export dir
    texts: list[str]
    file: str | None = None          # JSONL: {"text": ...} objects (other keys ignored) or JSON strings
    target: str | None = None
    method: str = "ig"
    variant: str | None = None       # occlusion: the ONNX variant (default: the export's serve variant)
    steps: int = 50
    max_steps: int = 400
    json_out: str | None = None      # "-" for stdout
    html_out: str | None = None
    png_out: str | None = None
    colour: str = "auto"


def read_texts(path: str) -> list[str]:
    """Texts of a JSONL file, one per line: an object with a "text" field, or a JSON string."""
    file = Path(path)
    if not file.is_file():
        raise ExplainError(f"{path}: no such texts file")
    texts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ExplainError(f"{path}:{number}: not JSON ({exc})") from None
        text = item.get("text") if isinstance(item, dict) else item
        if isinstance(item, dict) and "text" not in item:
            raise ExplainError(f"{path}:{number}: no \"text\" field (fields: {', '.join(item) or 'none'})")
        texts.append(check_text(text, f"{path}:{number}: text"))
    if not texts:
        raise ExplainError(f"{path}: holds no texts")
    return texts


def gather_texts(options: ExplainOptions) -> list[str]:
    texts = [check_text(t, f"text {i + 1}") for i, t in enumerate(options.texts)]
    if options.file:
        texts += read_texts(options.file)
    if not texts:
        raise ExplainError('nothing to explain: give texts ("Sales fell ...") or --file texts.jsonl')
    return texts


def explainer(options: ExplainOptions):
    """A function text -> [Explanation] for the chosen method, and a line saying what it runs on."""
    if options.method not in METHODS:
        raise ExplainError(f"unknown method {options.method!r}; methods: {', '.join(METHODS)}")
    if options.method == "occlusion":
        return occlusion_explainer(options)
    from toolchain.explain.gradients import Quadrature, explain
    from toolchain.explain.model import load_explained_model

    if options.variant:
        raise ExplainError("--variant picks the ONNX variant for --method occlusion; integrated gradients run on "
                           "the fp32 PyTorch model")
    explained = load_explained_model(options.path)
    quadrature = Quadrature(steps=options.steps, max_steps=max(options.max_steps, options.steps))
    return (lambda text: explain(explained, text, options.target, quadrature)), explained.description


def occlusion_explainer(options: ExplainOptions):
    from toolchain.core.artifacts import ArtifactError, load_export
    from toolchain.explain.model import artifact_stage
    from toolchain.explain.occlusion import explain_text
    from toolchain.inference.runtime import OnnxModel

    if artifact_stage(Path(options.path)) != "export":
        raise ArtifactError(f"{options.path}: occlusion runs on an ONNX variant; give an export dir")
    export = load_export(options.path)
    if export.task != "sequence-classification":
        raise ExplainError(f"{options.path}: occlusion explains sequence classification; this export is "
                           f"{export.task} (use --method ig)")
    model = OnnxModel(export, options.variant or export.serve_variant, provider="cpu", threads=1)
    return (lambda text: [explain_text(model, text, options.target)]), f"{export.path} (ONNX {model.variant})"


def use_colour(choice: str) -> bool:
    if choice in ("always", "never"):
        return choice == "always"
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def run_explain(options: ExplainOptions) -> list[tuple[str, list[Explanation]]]:
    """Explain every text; print the terminal view (or JSON to stdout); write --json/--html/--png files."""
    from tqdm import tqdm

    texts = gather_texts(options)
    explain_one, model = explainer(options)
    results = [(text, explain_one(text)) for text in tqdm(texts, desc="explain", unit="text", file=sys.stderr,
                                                         disable=len(texts) < 4)]
    show(results, model, options)
    write_outputs(results, model, options)
    return results


def show(results, model: str, options: ExplainOptions) -> None:
    from toolchain.explain.render import legend, terminal_view

    if options.json_out == "-":
        print(json.dumps(as_json(results, model, options), indent=2))
        return
    colour = use_colour(options.colour)
    print(f"model: {model}\n{legend(colour)}\n")
    for text, explanations in results:
        if not explanations:
            print(f"no entities found in: {text}\n")
        for e in explanations:
            print(terminal_view(e, colour) + "\n")


def as_json(results, model: str, options: ExplainOptions) -> dict:
    return {"model": model, "method": options.method,
            "texts": [{"text": text, "explanations": [e.to_dict() for e in explanations]}
                      for text, explanations in results]}


def write_outputs(results, model: str, options: ExplainOptions) -> None:
    from toolchain.core.artifacts import write_json

    explanations = [e for _, batch in results for e in batch]
    if options.json_out and options.json_out != "-":
        write_json(options.json_out, as_json(results, model, options))
        print(f"wrote {options.json_out}", file=sys.stderr)
    if options.html_out:
        from toolchain.explain.render import write_html
        print(f"wrote {write_html(explanations, options.html_out)}", file=sys.stderr)
    if options.png_out:
        from toolchain.explain.picture import write_png
        print(f"wrote {write_png(explanations, options.png_out)}", file=sys.stderr)
