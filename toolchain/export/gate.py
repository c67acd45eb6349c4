"""Gates of the export: parity figures and the accuracy gate of the serving variant."""
from __future__ import annotations


class GateError(RuntimeError):
    """A variant failed a parity or accuracy gate; the message names the variant and the margin."""


def check_parity(name: str, diff: float, atol: float, what: str) -> None:
    if not diff < atol:
        raise GateError(f"variant {name!r}: {what} max abs logit difference {diff:.3g} is over the tolerance "
                        f"{atol:g} (gate.parity_atol); the exported graph does not match the PyTorch model")


def check_accuracy(name: str, row: dict, reference: dict, metric: str, max_drop: float, min_agreement: float) -> dict:
    """Compare a variant's test metric and label agreement with fp32 PyTorch; raise GateError on a miss."""
    drop = 100.0 * (reference["test"][metric] - row["test"][metric])
    agreement = row["test"]["agreement"]
    result = {"variant": name, "metric": metric, "reference": reference["test"][metric],
              "value": row["test"][metric], "drop_points": drop, "max_drop_points": max_drop,
              "agreement": agreement, "min_agreement": min_agreement,
              "passed": drop <= max_drop and agreement >= min_agreement}
    problems = []
    if drop > max_drop:
        problems.append(f"test {metric} {row['test'][metric]:.4f} vs fp32 PyTorch {reference['test'][metric]:.4f}, "
                        f"a drop of {drop:.2f} points (allowed {max_drop:g}, gate.max_drop)")
    if agreement < min_agreement:
        problems.append(f"label agreement with fp32 PyTorch on test is {agreement:.2%}, below "
                        f"{min_agreement:.2%} (gate.min_agreement), short by {min_agreement - agreement:.2%}")
    if problems:
        raise GateError(f"serve variant {name!r} failed the accuracy gate: " + "; ".join(problems))
    return result
