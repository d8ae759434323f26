"""fit under torchrun (2 processes, gloo on CPU) against the same run in one process."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtlora_lite.multitask.distributed import ShardSampler, is_main_process, launch, rank_and_world

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = WORKER.parents[1]


def _torchrun(*args: str) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, run_python: Callable) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ddp")
    single = run_python([str(WORKER), str(out / "single"), "--single"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_python(_torchrun(str(WORKER), str(out / "ddp")))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return {"single": out / "single", "ddp": out / "ddp"}


def test_two_processes_train_what_one_does_with_the_doubled_batch(runs: dict[str, Path]) -> None:
    single, ddp = (load_file(str(runs[k] / "params.safetensors")) for k in ("single", "ddp"))
    assert single.keys() == ddp.keys() and any("ts_lora" in k or "tasks." in k for k in single)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-5, rtol=1e-4, msg=name)
    # MTLoRA's last shared fc2 update never gets a gradient ("official" mode): DDP skipped it
    never = "encoder.backbone.layers.3.blocks.0.mlp.fc2.lora_B"
    assert not ddp[never].any() and not single[never].any()
    steps = [json.loads((runs[k] / "metrics.json").read_text())["steps"] for k in runs]
    assert steps == [8, 8]  # 32 examples, batch 8 (4 per rank), 2 epochs


def test_metrics_reduced_over_ranks_are_those_of_one_process(runs: dict[str, Path]) -> None:
    ddp = json.loads((runs["ddp"] / "metrics.json").read_text())
    assert ddp["fit"] == ddp["evaluate"]  # fit's last validation: the same reduced numbers
    from mtlora_lite import build_model, evaluate
    from mtlora_lite.course.backbones import build_course_swin
    from tests.ddp_worker import N_VAL, SEED, TASKS, Data  # same model and data, one process

    torch.manual_seed(SEED)
    swin = build_course_swin(img_size=32, embed_dim=8, depths=(1, 1, 1, 1), window_size=2)
    model = build_model(swin, TASKS, "mtlora", shared_rank=2, task_rank=2, dropout=0.0)
    model.load_state_dict(load_file(str(runs["ddp"] / "params.safetensors")), strict=False)
    loader = torch.utils.data.DataLoader(Data(N_VAL, SEED + 1), batch_size=3)
    assert evaluate(model, TASKS, loader, device="cpu") == ddp["evaluate"]  # counts: exact


def test_a_failing_rank_stops_the_whole_run(tmp_path: Path, run_python: Callable) -> None:
    tic = time.perf_counter()
    failed = run_python(_torchrun(str(WORKER), str(tmp_path), "--fail"), timeout=90)
    assert failed.returncode != 0 and time.perf_counter() - tic < 90
    assert "rank 1 fails at its third step" in failed.stdout + failed.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_ranks_with_different_data_fail_at_once(tmp_path: Path, run_python: Callable) -> None:
    failed = run_python(_torchrun(str(WORKER), str(tmp_path), "--uneven"), timeout=90)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "the ranks hold different data" in out
    assert "'examples': 32" in out and "'examples': 30" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("rank", "message"), [
    ("0", r"rank\(s\) \[1\] of 2 did not arrive within 2 s"),
    ("1", r"rank 1 could not reach the store at 127\.0\.0\.1:\d+ that rank 0 serves within 2 s"),
])  # fmt: skip
def test_a_peer_that_never_starts_is_named_after_the_start_timeout(
    tmp_path: Path, run_python: Callable, monkeypatch: pytest.MonkeyPatch, rank: str, message: str
) -> None:
    env = {"RANK": rank, "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MTLORA_START_TIMEOUT_S": "2"}
    for name, value in {
        **env,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    alone = run_python([str(WORKER), str(tmp_path)], timeout=60)  # the other rank never starts
    assert alone.returncode != 0
    assert re.search(message, alone.stderr), alone.stderr[-2000:]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WORLD_SIZE": "abc"},
            r"WORLD_SIZE='abc' is not an integer; start the script with torchrun",
        ),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 but WORLD_SIZE=2: a rank must be in 0\.\.1"),
        ({"RANK": "1"}, r"RANK=1 but WORLD_SIZE=1 \(WORLD_SIZE is not set\)"),
        ({"WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "WORLD_SIZE=2 but MASTER_ADDR not set"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "http"}, "MASTER_PORT='http'"),
    ],
)
def test_the_launch_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        launch(torch.device("cpu"))
    with pytest.raises(ValueError, match=message):
        rank_and_world()


def test_shard_sampler_covers_every_example_once() -> None:
    shards = [list(ShardSampler(13, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(13))
    assert [len(s) for s in shards] == [5, 4, 4]


def test_is_main_process_is_rank_zero_or_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert is_main_process()  # one process
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, main in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert is_main_process() is main
