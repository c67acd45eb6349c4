"""Training as users run it: the CLI in a subprocess, killed and resumed; DDP with 2 CPU processes (gloo)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli_args(overrides, run_dir, *extra):
    args = [o for o in overrides if not o.startswith("output_dir=")]
    return ["train", "--config", "sentiment-full", *args, f"output_dir={run_dir}", "train.epochs=4",
            "train.eval_steps=10", "train.save_total_limit=3", *extra]


def run_cli(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_killed_run_resumes_to_the_same_result(tiny_overrides, tmp_path):
    straight = tmp_path / "straight"
    done = run_cli(cli_args(tiny_overrides, straight))
    assert done.returncode == 0, done.stderr[-2000:]

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "toolchain.cli", *cli_args(tiny_overrides, resumed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (resumed / "checkpoints" / "checkpoint-30" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-epoch: 15 steps an epoch
    proc.wait()
    assert (resumed / "INCOMPLETE").exists(), "an interrupted run must be marked incomplete"
    assert not (resumed / "model").exists() and not (resumed / "metrics.json").exists()
    refused = run_cli(["evaluate", str(resumed)])
    assert refused.returncode == 2 and "incomplete" in refused.stderr

    again = run_cli(["train", "--resume", str(resumed)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (resumed / "INCOMPLETE").exists()
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["train"]["global_step"] == a["train"]["global_step"] == 60
    assert b["test"]["accuracy"] == pytest.approx(a["test"]["accuracy"], abs=0.034)  # one example of 30
    assert b["dev"]["macro_f1"] == pytest.approx(a["dev"]["macro_f1"], abs=0.05)


def test_ddp_two_cpu_processes_agree_and_only_rank0_writes(tiny_overrides, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "toolchain.cli", *cli_args(tiny_overrides, run_dir, "train.epochs=2")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = dict(re.findall(r"\[rank (\d)/2\] (weights_sha256=\w+ test_metric=[\d.]+)", done.stdout + done.stderr))
    assert set(ranks) == {"0", "1"}, done.stdout[-2000:]
    assert ranks["0"] == ranks["1"], ranks
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1, f"only rank 0 logs: {events}"
    assert (done.stdout + done.stderr).count("run dir:") == 2  # both ranks finish; the files come from rank 0 only
