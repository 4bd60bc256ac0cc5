"""The streamed L-BFGS head solver and the memory-mapped feature store it reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tlearn.features._store import FeatureMatrix, TensorFeatures, open_features, write_feature_shards
from tlearn.features.head_solver import fit_linear_head_lbfgs


def _blobs(rows: int, dim: int = 48, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes: not separable, so the L2 term and the optimum both matter."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))  # one set of classes
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(classes, (rows,), generator=generator)
    return means[labels] + 1.5 * torch.randn(rows, dim, generator=generator), labels


def _solve_before_streaming(train_x, train_y, l2: float, fast: bool) -> torch.Tensor:
    """The solver as it was before chunking (one closure over the whole tensor), as the reference."""
    dtype = torch.float32 if fast else torch.float64
    x = train_x.to(dtype)
    weight = torch.zeros(5, x.shape[1], dtype=dtype, requires_grad=True)
    bias = torch.zeros(5, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=300, history_size=20,
                                  tolerance_grad=1e-5 if fast else 1e-6, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, train_y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the solver does for small data: thread count changes the rounding
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return weight.detach()


@pytest.mark.parametrize("fast", [True, False])
def test_one_chunk_is_the_solver_before_streaming(fast):
    """Data within one chunk takes the path it always took: the same products, the same weights."""
    (x, y), (val_x, val_y) = _blobs(400), _blobs(100, seed=1)
    head = nn.Linear(48, 5)
    fit_linear_head_lbfgs(head, x, y, val_x, val_y, grid=(1e-2,), fast=fast)
    reference = _solve_before_streaming(x, y, 1e-2, fast)
    # bitwise on the machine tried (the mean is computed as sum / n); rounding is all that may differ
    torch.testing.assert_close(head.weight.detach(), reference.float(), rtol=1e-5, atol=1e-6)


def test_streamed_chunks_give_the_weights_of_one_chunk():
    """Chunked sums only reorder float64 additions (about 1e-16 relative); L-BFGS stops at a
    gradient norm of 1e-6, so two runs may part by about that over the iterations: 1e-5 is far
    below any difference in the objective, and far above rounding."""
    (x, y), (val_x, val_y) = _blobs(1000), _blobs(200, seed=1)
    whole, streamed = nn.Linear(48, 5), nn.Linear(48, 5)
    grid = (1e-1, 1e-2, 1e-3)
    one = fit_linear_head_lbfgs(whole, x, y, val_x, val_y, grid=grid, fast=False)
    many = fit_linear_head_lbfgs(streamed, x, y, val_x, val_y, grid=grid, fast=False, chunk_rows=96)
    assert one.l2 == many.l2 and one.val_top1 == many.val_top1
    assert one.train_loss == pytest.approx(many.train_loss, rel=1e-9)
    torch.testing.assert_close(streamed.weight, whole.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(streamed.bias, whole.bias, rtol=1e-5, atol=1e-5)


def test_store_round_trip_is_memory_mapped(tmp_path):
    x, _ = _blobs(1000)
    path = write_feature_shards(tmp_path / "features", (chunk for chunk in x.split(300)))
    store = open_features(path)
    assert isinstance(store, FeatureMatrix) and isinstance(TensorFeatures(x), FeatureMatrix)
    assert (len(store), store.dim, len(store.paths)) == (1000, 48, 4)
    shard = store.shard(0)
    assert isinstance(shard, np.memmap) and not shard.flags.writeable  # a mapping, not a read
    chunks = list(store.iter_chunks(128))
    assert max(len(chunk) for chunk in chunks) == 128
    assert torch.equal(torch.cat(chunks), x)


def test_float16_store_and_bad_input(tmp_path):
    x, _ = _blobs(100)
    store = open_features(write_feature_shards(tmp_path / "half", [x], dtype="float16"))
    assert store.shard(0).dtype == np.float16
    torch.testing.assert_close(torch.cat(list(store.iter_chunks(64))).float(), x, rtol=1e-3, atol=2e-3)
    with pytest.raises(ValueError, match="features"):
        write_feature_shards(tmp_path / "ragged", [x, x[:, :10]])
    (tmp_path / "half" / "shard-00000.npy").unlink()
    with pytest.raises(FileNotFoundError):
        open_features(tmp_path / "half")


def test_solver_reads_the_store(tmp_path):
    """A float32 store gives the solve on the same tensor in RAM, chunk boundaries and all."""
    (x, y), (val_x, val_y) = _blobs(1000), _blobs(200, seed=1)
    train = open_features(write_feature_shards(tmp_path / "train", x.split(256)))
    val = open_features(write_feature_shards(tmp_path / "val", [val_x]))
    from_disk, in_ram = nn.Linear(48, 5), nn.Linear(48, 5)
    on_disk = fit_linear_head_lbfgs(from_disk, train, y, val, val_y, grid=(1e-2,), chunk_rows=128)
    in_memory = fit_linear_head_lbfgs(in_ram, x, y, val_x, val_y, grid=(1e-2,), chunk_rows=128)
    assert on_disk == in_memory
    assert torch.equal(from_disk.weight, in_ram.weight)
    assert on_disk.val_top1 > 0.8  # the head learned the blobs, not just matched itself
