"""`torchrun --nproc_per_node=2 -m minidiff train` (2 gloo processes on the CPU) trains what one process trains.

Both runs see the same global batches (8, 8, then 5 images: the last one splits 3 + 2, so the size
weights of `minidiff.training.distributed.shard` matter). What may differ is only the order of float32 additions:
each process sums its rows, then the all-reduce adds the two halves. So we compare:
  * the gradient of step 1 (AdamW's first exp_avg is exactly (1 - beta1) * grad): relative error of the
    whole gradient vector <= 1e-5 (we measure ~1e-7: float32 rounding of sums in another order);
  * the logged losses: rtol 1e-5 (rounding, ~1e-7 measured);
  * AdamW's exp_avg (a running mean of the gradients) at every step: relative error <= 2e-5;
  * the weights after K steps: ||dw|| / ||w|| <= 3e-5, and every element within 2 * sum_t lr_t. Adam divides
    a gradient by its own running RMS, so on parameters whose true gradient is ~0 (a bias just before a
    GroupNorm) the rounding noise of two summation orders becomes a step of up to ~lr either way; that, not
    a wrong batch, is the per-element bound;
  * the data position and the generators' states: equal (the checkpoint does not depend on the world size).
Then the 2-process checkpoint resumes in 1 process, ending next to a 1-process run of the same length.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from minidiff import cli
from minidiff.training import distributed
from minidiff.training.checkpoint import list_checkpoints, load_checkpoint
from minidiff.training.config import PRESETS

K = 4  # optimizer steps of the 2-process run
TOTAL = 6  # steps after resuming in 1 process
# a warm-up within 20% of K steps: a longer one is fitted to each run's length (K and TOTAL would differ)
LR, WARMUP = PRESETS["tiny"].lr, 1
# fp32: the bounds below are fp32's rounding of another summation order (bf16 autocast would round far more)
ARGS = [
    "train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--limit", "21", "--batch-size", "8",
    "--flip", "--checkpoint-every", "1", "--keep-checkpoints", "10", "--sample-steps", "2", "--num-samples", "1",
    "--mixed-precision", "no", "--device", "cpu", "--quiet", "--warmup-steps", str(WARMUP),
]  # fmt: skip

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # talk over the loopback interface only
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "minidiff", *ARGS, "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def flat(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten().double() for v in state_dict.values()])


def exp_avg(ckpt: dict) -> torch.Tensor:
    states = ckpt["optimizer"]["state"]
    return torch.cat([states[i]["exp_avg"].flatten().double() for i in sorted(states)])


def assert_same_run(single: dict, multi: dict, steps: int) -> None:
    """The checks of the module docstring, between two checkpoints of the same step."""
    assert (multi["step"], multi["epoch"], multi["batch_in_epoch"]) == (
        single["step"],
        single["epoch"],
        single["batch_in_epoch"],
    )
    assert torch.equal(multi["rng"]["generators"]["noise"], single["rng"]["generators"]["noise"])
    # losses: float32 rounding of the same sums taken in another order (~1e-7 measured)
    torch.testing.assert_close(multi["losses"], single["losses"], rtol=1e-5, atol=1e-7)
    # gradients (AdamW's exp_avg, an average of them): ~1.5e-6 relative measured; a wrong share of a
    # batch (e.g. unweighted halves of 3 + 2 images) is off by ~1e-2
    g_single, g_multi = exp_avg(single), exp_avg(multi)
    assert ((g_multi - g_single).norm() / g_single.norm()).item() <= 2e-5
    w_single, w_multi = flat(single["model"]), flat(multi["model"])
    relative = ((w_multi - w_single).norm() / w_single.norm()).item()
    assert relative <= 3e-5, relative  # ~3e-6 after 4 steps, ~6e-6 after 6 measured (Adam, see above)
    adam_bound = 2 * sum(LR * min(1.0, (s + 1) / WARMUP) for s in range(steps))  # see the docstring
    assert (w_multi - w_single).abs().max().item() <= adam_bound


def test_two_gloo_processes_equal_one_and_resume_in_one(tmp_path, capsys):
    # 1. one process, TOTAL steps, in this process (the test session runs torch on one thread)
    assert cli.main([*ARGS, "--out", str(tmp_path / "single"), "--max-steps", str(TOTAL)]) == 0
    capsys.readouterr()
    single = {p.name: load_checkpoint(p) for p in list_checkpoints(tmp_path / "single" / "checkpoints")}

    # 2. two processes, K steps, through torchrun
    run = torchrun(tmp_path / "multi", 2, "--max-steps", str(K))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"trained {K} steps") == 1  # rank 0 alone reports ...
    rows = (tmp_path / "multi" / "loss.csv").read_text().splitlines()
    assert len(rows) == 1 + K  # ... and writes loss.csv, once
    names = [p.name for p in list_checkpoints(tmp_path / "multi" / "checkpoints")]
    assert names == [f"step-{s:08d}.pt" for s in range(1, K + 1)]

    # 3. the gradient of step 1 (exp_avg = 0.1 grad): same batch, other summation order
    first = "step-00000001.pt"
    g_single, g_multi = (
        exp_avg(single[first]),
        exp_avg(load_checkpoint(tmp_path / "multi/checkpoints" / first)),
    )
    assert ((g_multi - g_single).norm() / g_single.norm()).item() <= 1e-5
    for step in range(1, K + 1):
        name = f"step-{step:08d}.pt"
        assert_same_run(single[name], load_checkpoint(tmp_path / "multi" / "checkpoints" / name), step)

    # 4. the 2-process checkpoint resumes in 1 process (no `module.` keys, no world size inside)
    multi_k = load_checkpoint(tmp_path / "multi" / "checkpoints" / f"step-{K:08d}.pt")
    assert not any(k.startswith("module.") for k in multi_k["model"])
    argv = [*ARGS, "--out", str(tmp_path / "multi"), "--resume", "--max-steps", str(TOTAL)]
    assert cli.main(argv) == 0
    resumed = load_checkpoint(tmp_path / "multi" / "checkpoints" / f"step-{TOTAL:08d}.pt")
    assert torch.equal(resumed["losses"][:K], multi_k["losses"])  # the history came from the checkpoint
    assert_same_run(single[f"step-{TOTAL:08d}.pt"], resumed, TOTAL)


def test_shard_weights_give_the_whole_batch_mean():
    """sum_r w_r * mean(rows_r) / N == mean(all rows), for every batch size and world size, including
    batches smaller than the world (those ranks get weight 0)."""
    for n in range(1, 12):
        x = torch.randn(n, dtype=torch.float64)
        for world in range(1, 6):
            total = 0.0
            for r in range(world):
                (rows,), weight = distributed.shard((x,), r, world)
                total += weight * rows.mean().item()
            assert total / world == pytest.approx(x.mean().item(), rel=1e-12, abs=1e-12), (n, world)


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.init_from_env(torch.device("cpu")) == (torch.device("cpu"), False)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module and distributed.unwrap(module) is module
    value = torch.tensor(3.0)
    assert distributed.all_reduce_mean(value) is value
    distributed.barrier()


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'; expected an integer"):
        distributed.world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set; start the processes with torchrun"):
        distributed.init_from_env(torch.device("cpu"))


def _disagree(rank: int, world: int, port: int, results: str) -> None:
    """Worker of the test below: rank r claims to resume from step 10 * r."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    device, started = distributed.init_from_env(torch.device("cpu"))
    try:
        distributed.check_same_on_all_ranks(10 * rank, "the step to resume from", device)
        message = "no error"
    except RuntimeError as err:
        message = str(err)
    distributed.cleanup(started)
    Path(results, f"rank{rank}.txt").write_text(message)


def test_processes_that_disagree_on_the_resume_step_all_stop(tmp_path, monkeypatch):
    """Two gloo processes (torch.multiprocessing, 127.0.0.1) that read different checkpoints both raise,
    so no rank trains on alone and hangs in the next all-reduce."""
    import torch.multiprocessing as mp

    if sys.platform.startswith("linux"):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_disagree, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert f"the step to resume from differs between the processes (0..10; this is rank {rank}" in message
