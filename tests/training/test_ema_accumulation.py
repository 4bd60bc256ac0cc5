"""--ema-decay (ema.py) and --accumulate (accumulation.py): the average by hand, accumulation equal
to a larger batch, exact resume with both on, and the flags' one-line errors."""
import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlearn.config import TrainConfig
from tlearn.errors import ConfigError
from tlearn.run_folder import checkpoint
from tlearn.run_folder.checkpoint import published_weights
from tlearn.runtime import setup_runtime
from tlearn.training._loop import Loop
from tlearn.training._optim import make_scheduler
from tlearn.training.callbacks.accumulation import Accumulation, optimizer_steps
from tlearn.training.callbacks.ema import WeightAverage, start_weight_average
from tlearn.training.stage_data import StageData
from tlearn.training.state import TrainState

from conftest import TINY_MODEL, kill_chain, make_folder

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]
TIMING_COLUMNS = ("seconds", "images_per_s", "data_seconds", "compute_seconds", "optimizer_seconds",
                  "eval_seconds")


def _sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    loss = model(torch.randn(4, 3, generator=generator)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_ema_is_the_warmed_up_average_by_hand_and_survives_a_state_round_trip():
    """Update k averages with decay min(D, 1 - k^(-2/3)): the first copies, the cap holds from k = 4."""
    torch.manual_seed(0)
    model, decay, generator = nn.Linear(3, 2), 0.6, torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    average, expected, decays = WeightAverage(model, decay), None, []
    for k in range(1, 7):
        _sgd_step(model, optimizer, generator)
        average.update()
        weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
        factor = min(decay, 1 - k ** (-2 / 3))
        expected = weights if expected is None else {n: factor * expected[n] + (1 - factor) * weights[n]
                                                     for n in weights}
        decays.append(average.decay())
        for name, value in average.module.state_dict().items():
            assert torch.allclose(value, expected[name], rtol=1e-6, atol=1e-7), (k, name)
    assert decays == pytest.approx([0.0, 1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3), 0.6, 0.6, 0.6])
    assert not torch.allclose(average.module.weight, model.weight)  # the live weights kept training
    # A resumed stage: a fresh average loaded from the saved state goes on exactly like the original.
    restored = WeightAverage(model, decay)
    restored.load_state_dict(average.state_dict())
    for _ in range(2):
        _sgd_step(model, optimizer, generator)
        average.update()
        restored.update()
    assert restored.updates == average.updates == 8
    assert all(torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(),
                                                 average.module.state_dict().values()))


def test_a_head_average_is_published_in_place_of_the_live_head():
    classifier = nn.Module()
    classifier.body, classifier.head = nn.Linear(3, 3), nn.Linear(3, 2)
    average = start_weight_average(classifier, classifier.head, 0.9)
    with torch.no_grad():
        classifier.head.weight.add_(1.0)  # live weights move, the average does not (no update yet)
    weights = published_weights(classifier.state_dict(), average.state_dict())
    assert average.prefix == "head." and weights.keys() == classifier.state_dict().keys()
    assert torch.equal(weights["head.weight"], average.module.weight)
    assert torch.equal(weights["body.weight"], classifier.body.weight)
    assert published_weights(weights, None) is weights


def _train_without_batchnorm(batch_size: int, accumulate: int, scaled: bool = False,
                             wrap=lambda model: model) -> tuple[nn.Module, int]:
    """Two epochs of a conv + LayerNorm model on 22 samples: groups of 4-image micro-batches leave an
    incomplete last group (4 + 2 samples for N=2; 2 micro-batches instead of 4 for N=4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 3))
    data = torch.Generator().manual_seed(2)
    dataset = TensorDataset(torch.randn(22, 3, 6, 6, generator=data), torch.randint(0, 3, (22,), generator=data))
    # Same seed, same permutation: batches of B x N are the concatenated groups of N batches of B.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    steps = optimizer_steps(len(loader), accumulate)
    scheduler = make_scheduler(optimizer, 2 * steps, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaled else None
    runtime = setup_runtime("cpu", channels_last=False)
    module = wrap(model)
    data = StageData(loader, loader, module, runtime.to_device, cached=True)  # cached: one process, nothing to sum
    loop = Loop(module, data, TrainState(optimizer, scheduler, scaler), runtime, nn.CrossEntropyLoss(), num_classes=3,
                callbacks=[Accumulation(accumulate)])
    for _ in range(2):
        loop.train_epoch()
    return model, scheduler.last_epoch


@pytest.mark.parametrize("accumulate", [2, 4])
@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad-scaler"])
def test_accumulating_n_batches_equals_one_batch_n_times_larger(accumulate, scaled):
    large, large_steps = _train_without_batchnorm(4 * accumulate, 1, scaled)
    small, small_steps = _train_without_batchnorm(4, accumulate, scaled)
    assert small_steps == large_steps == 2 * -(-22 // (4 * accumulate))  # the schedule counts optimiser steps
    for (name, a), b in zip(large.state_dict().items(), small.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name}: max diff {(a - b).abs().max():.2e}"
    unaccumulated, _ = _train_without_batchnorm(4, 1, scaled)  # the test can fail: batch size matters
    assert not torch.allclose(unaccumulated[-1].weight, small[-1].weight, rtol=1e-5, atol=1e-6)


class CountingDDP(nn.parallel.DistributedDataParallel):
    unsynced = 0
    reduced = 0  # all-reduces DDP actually ran (a comm hook counts them; the model is one bucket)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_comm_hook(None, _counting_allreduce)

    def no_sync(self):
        CountingDDP.unsynced += 1
        return super().no_sync()


def _counting_allreduce(state, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    CountingDDP.reduced += 1
    return allreduce_hook(None, bucket)


def test_under_ddp_only_the_last_micro_batch_of_a_group_synchronises(tmp_path):
    """A one-process gloo group: DDP with no_sync on the other micro-batches trains the same weights."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped, _ = _train_without_batchnorm(4, 4, wrap=CountingDDP)
    finally:
        dist.destroy_process_group()
    plain, _ = _train_without_batchnorm(4, 4)
    assert CountingDDP.unsynced == 2 * (3 + 1)  # 6 micro-batches an epoch, groups of 4 and 2: all but 2
    assert CountingDDP.reduced == 2 * 2  # no_sync must hold the forward too, or every backward all-reduces
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def _rows_without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
            for row in csv.DictReader((run / "metrics.csv").open())]


def test_killed_with_ema_and_accumulation_resumes_bit_identical(tmp_path):
    """Two-stage, SGD head on cached features then fine-tuning, both with an EMA, 2 micro-batches per
    step (20 training images in batches of 4: 3 steps an epoch, the last a lone batch). Kills: mid
    epoch 2 of the probe (inside its second group; epoch 1's average is committed) and right after the
    probe's last commit (the derived files, averaged weights, must be rebuilt from the state)."""
    data = make_folder(tmp_path / "data", per_class=8)
    train = ["--data", str(data), *TINY, "--deterministic", "--seed", "4", "--strategy", "two-stage",
             "--head-solver", "sgd", "--head-epochs", "2", "--epochs", "2", "--lr", "0.05",
             "--ema-decay", "0.9", "--accumulate", "2"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(train, ["step:9", "commit:1"], reference, run)
    assert _rows_without_timing(run) == _rows_without_timing(reference)
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE, checkpoint.STATE_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    _, state = checkpoint.load_train_state(reference)
    stage_state = state["stage_state"]
    assert stage_state["ema"]["updates"] == stage_state["scheduler"]["last_epoch"] == 2 * 3
    saved = load_file(str(reference / checkpoint.LAST_FILE))  # the last epoch ended the run: the average
    assert all(torch.equal(saved[k], v) for k, v in stage_state["ema"]["weights"].items())


@pytest.mark.parametrize("flags,message", [
    (["--ema-decay", "1"], "--ema-decay must be between 0 and 1 (exclusive), got 1.0"),
    (["--ema-decay", "0"], "--ema-decay must be between 0 and 1 (exclusive), got 0.0"),
    (["--accumulate", "0"], "--accumulate must be at least 1, got 0"),
])
def test_bad_values_are_one_line_exit_2(tmp_path, capsys, flags, message):
    from tlearn.cli import main

    data = make_folder(tmp_path / "data", per_class=4)
    assert main(["train", "--data", str(data), *TINY, *flags, "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError):
        TrainConfig(ema_decay=-0.5)
