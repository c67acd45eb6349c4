"""Benchmark building blocks: FLOP counting, peak rates, workloads, the latency check's verdict, the baseline."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.bench.flops import encoder_shape, flops_per_sentence
from toolchain.bench.latency_check import SPECS, compare, judge, regression_lines, verdict_table
from toolchain.bench.machine import Machine, cgroup_cpu_limit, peak_rates

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**extra) -> dict:
    return {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 64,
            "id2label": {"0": "negative", "1": "neutral", "2": "positive"}, **extra}


def test_flop_count_from_config_matches_torch_flop_counter():
    """The config formula equals what PyTorch's FlopCounterMode counts for a real forward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    config = tiny_config(vocab_size=100, max_position_embeddings=64)
    model = BertForSequenceClassification(BertConfig(**config, attn_implementation="eager")).eval()
    for tokens in (7, 40):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(input_ids=torch.ones(1, tokens, dtype=torch.long))
        assert flops_per_sentence(encoder_shape(config), tokens) == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_pruned_heads_and_ffn_widths_reduce_the_count():
    full = encoder_shape(tiny_config())
    pruned = encoder_shape(tiny_config(pruned_heads={"0": [1, 2], "1": [3]}), {"intermediate_sizes": [40, 30]})
    assert pruned.heads == [2, 3] and pruned.ffn == [40, 30]
    assert flops_per_sentence(pruned, 32) < 0.8 * flops_per_sentence(full, 32)
    with pytest.raises(ValueError, match="3 intermediate_sizes for 2 layers"):
        encoder_shape(tiny_config(), {"intermediate_sizes": [1, 2, 3]})


def machine(flags: set, cores: float = 2, per_core: int = 1) -> Machine:
    return Machine("test cpu", "x86_64", cores, int(cores), per_core, 2500.0, "test", sorted(flags), {})


def test_peak_rates_follow_the_isa_and_the_cores_used():
    avx2 = peak_rates(machine({"avx", "avx2", "fma"}))
    assert avx2["fp32_flops"] == 2 * 2.5e9 * 32 and avx2["int8_ops"] == 2 * 2.5e9 * 64
    assert peak_rates(machine({"avx", "avx2", "fma"}), threads=1)["fp32_flops"] == 2.5e9 * 32
    vnni = peak_rates(machine({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}))
    assert vnni["fp32_per_cycle_per_core"] == 64 and vnni["int8_per_cycle_per_core"] == 256
    hyperthreads = peak_rates(machine({"avx2", "fma"}, cores=4, per_core=2))
    assert hyperthreads["fp32_flops"] == 2 * 2.5e9 * 32
    assert any("AVX2 without VNNI" in line for line in avx2["assumptions"])


def test_cgroup_quota_caps_the_usable_cores(tmp_path):
    (tmp_path / "limited").write_text("150000 100000\n")
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "limited")) == 1.5
    assert cgroup_cpu_limit(str(tmp_path / "unlimited")) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_fixed_length_texts_are_exactly_n_tokens(tiny_bert):
    from transformers import AutoTokenizer

    from toolchain.bench.workloads import LATENCY_CHECK_SENTENCES, fixed_length_workload, sentence_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    sentences = [text for text, _ in LATENCY_CHECK_SENTENCES]
    for length in (32, 64, 128):
        workload = fixed_length_workload(tokenizer, sentences, length, count=20)
        assert len(set(workload.texts)) > 10 and set(workload.token_counts) == {length}
        batch = sentence_batches(workload, 8, 1)[0]
        encoded = tokenizer(batch["texts"], padding=True, truncation=True, max_length=batch["max_length"])
        assert {len(ids) for ids in encoded["input_ids"]} == {length}


def test_injected_delay_hook_parses_its_variable():
    from toolchain.bench.runners import injected_delay

    assert injected_delay({}) is None
    assert injected_delay({"TOOLCHAIN_BENCH_INJECT_DELAY_MS": "20"}) == ("int8", 20.0)
    assert injected_delay({"TOOLCHAIN_BENCH_INJECT_DELAY_MS": "fp32=2.5"}) == ("fp32", 2.5)
    with pytest.raises(ValueError, match="'int8=slow'"):
        injected_delay({"TOOLCHAIN_BENCH_INJECT_DELAY_MS": "int8=slow"})


def entry(value: float) -> dict:
    return {"value": value, "repeats": [value], "spread": [value, value], "figures": {"a_ms": 1.0, "b_ms": 2.0}}


def test_verdict_flags_regressions_in_each_ratios_bad_direction():
    baseline = {"ratios": {"int8_vs_pytorch_b1": {"value": 0.30, "tolerance": 0.35},
                           "batched_vs_unbatched_c64": {"value": 2.0, "tolerance": 0.35}}}
    slower = compare({"int8_vs_pytorch_b1": entry(0.45), "batched_vs_unbatched_c64": entry(1.2)}, baseline)
    assert [r["result"] for r in slower] == ["REGRESSION", "REGRESSION"]
    assert slower[0]["change"] == pytest.approx(0.5) and slower[0]["limit"] == pytest.approx(0.405)
    lines = regression_lines(slower, {"int8_vs_pytorch_b1": entry(0.45), "batched_vs_unbatched_c64": entry(1.2)})
    assert "int8_vs_pytorch_b1" in lines[0] and "+50%" in lines[0] and "a_ms 1.00" in lines[0]
    faster = compare({"int8_vs_pytorch_b1": entry(0.15), "batched_vs_unbatched_c64": entry(2.5)}, baseline)
    assert faster[0]["result"].startswith("pass (improved") and faster[1]["result"] == "pass"
    assert "REGRESSION" not in verdict_table(faster)
    assert judge("int8_vs_fp32_b32", entry(0.7), None)["result"] == "new (no baseline)"


def test_committed_baseline_is_complete_and_names_its_machine():
    from toolchain.bench.baseline import read_baseline

    baseline = read_baseline(REPO / "benchmarks" / "baseline.json")
    assert set(baseline["ratios"]) == set(SPECS)
    for name, ratio in baseline["ratios"].items():
        assert ratio["value"] > 0 and ratio["tolerance"] > 0, name
        assert ratio["better"] == "lower" or ratio["tolerance"] < 1, f"{name}: a limit of 0 or less never fails"
        assert ratio["better"] == SPECS[name].better, name
    machine = baseline["machine"]
    assert machine["model"] and machine["flags"] and machine["cores"] >= 1
    assert machine["versions"]["onnxruntime"] and machine["versions"]["torch"]
    assert baseline["command"].startswith("toolchain bench update-baseline")


def test_one_baseline_per_cpu_family(tmp_path):
    """Recording on one family keeps the others'; a family without a baseline judges only portable ratios."""
    from toolchain.bench.baseline import baseline_document, cpu_family, read_baseline, read_families, write_baseline
    from toolchain.bench.latency_check import compare

    avx2 = {"model": "AMD EPYC", "arch": "x86_64", "flags": "avx2,fma,avx"}
    amx = {"model": "Intel Xeon", "arch": "x86_64", "flags": "avx512f,avx512_vnni,avx512_bf16,amx_int8,amx_bf16,avx2"}
    assert (cpu_family(avx2), cpu_family(amx)) == ("x86_64-avx2", "x86_64-avx512_vnni-amx")
    assert cpu_family({"arch": "aarch64", "flags": "asimd,asimddp"}) == "aarch64-dotprod"
    path = tmp_path / "baseline.json"
    measured = {"int8_vs_fp32_b32": entry(0.70), "served_vs_offline_b1": entry(1.3)}
    write_baseline(path, baseline_document(measured, {}, avx2, {}, "update-baseline"))
    write_baseline(path, baseline_document({"int8_vs_fp32_b32": entry(0.35)}, {}, amx, {}, "update-baseline"))
    assert set(read_families(path)) == {"x86_64-avx2", "x86_64-avx512_vnni-amx"}
    assert read_baseline(path, "x86_64-avx2")["ratios"]["int8_vs_fp32_b32"]["value"] == 0.70

    # same family: every ratio judged, a doubled int8/fp32 ratio is a regression
    same = {r["ratio"]: r["result"] for r in compare({"int8_vs_fp32_b32": entry(1.4)}, read_baseline(path,
                                                                                                     "x86_64-avx2"))}
    assert same["int8_vs_fp32_b32"] == "REGRESSION"
    # an unknown family (ARM): the CPU-specific ratio is far off yet not judged; the portable one still is
    other = read_baseline(path, "aarch64-dotprod")
    assert other["same_family"] is False
    rows = {r["ratio"]: r for r in compare({"int8_vs_fp32_b32": entry(2.0), "served_vs_offline_b1": entry(1.5)},
                                           {**read_baseline(path, "x86_64-avx2"), "same_family": False,
                                            "family": "x86_64-avx2"})}
    assert rows["int8_vs_fp32_b32"]["result"].startswith("not judged")
    assert rows["served_vs_offline_b1"]["result"] == "pass"
    slow = compare({"served_vs_offline_b1": entry(5.0)}, {**read_baseline(path, "x86_64-avx2"),
                                                          "same_family": False, "family": "x86_64-avx2"})
    assert slow[0]["result"] == "REGRESSION"


def test_re_recording_keeps_reviewed_tolerances_and_notes(tmp_path):
    from toolchain.bench.baseline import baseline_document, previous_tolerances, read_baseline, write_baseline

    from toolchain.bench.machine import detect_machine

    path = tmp_path / "baseline.json"
    here = detect_machine().to_dict()
    first = baseline_document({"int8_vs_pytorch_b1": entry(0.3)}, {}, here, {}, "update-baseline")
    assert first["ratios"]["int8_vs_pytorch_b1"]["tolerance"] == SPECS["int8_vs_pytorch_b1"].tolerance
    first["ratios"]["int8_vs_pytorch_b1"]["tolerance"] = 0.5
    write_baseline(path, {**first, "notes": ["widened after review"]})
    kept, notes = previous_tolerances(path)
    assert kept == {"int8_vs_pytorch_b1": 0.5} and notes == ["widened after review"]
    again = baseline_document({"int8_vs_pytorch_b1": entry(0.28), "int8_vs_fp32_b32": entry(0.7)}, {}, here, kept, "x")
    assert again["ratios"]["int8_vs_pytorch_b1"]["tolerance"] == 0.5
    assert again["ratios"]["int8_vs_fp32_b32"]["tolerance"] == SPECS["int8_vs_fp32_b32"].tolerance
    assert read_baseline(path)["notes"] == ["widened after review"]
    assert previous_tolerances(tmp_path / "absent.json") == ({}, [])


def test_missing_baseline_is_a_clear_error(tmp_path, capsys):
    from toolchain.commands.bench import main

    assert main(["latency-check", "--baseline", str(tmp_path / "none.json"), "--parts", "offline"]) == 2
    assert "toolchain bench update-baseline" in capsys.readouterr().err


def test_bench_gate_is_a_deprecated_alias_of_latency_check(tmp_path, capsys):
    from toolchain.commands.bench import main

    assert main(["gate", "--baseline", str(tmp_path / "none.json"), "--parts", "offline"]) == 2
    err = capsys.readouterr().err
    assert "`bench gate` is deprecated" in err and "toolchain bench latency-check" in err
    assert "toolchain bench update-baseline" in err    # then runs as latency-check
