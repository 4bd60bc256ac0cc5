"""What a stage trains on: images through the whole model, or cached features through the head."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..config import DataConfig, RunConfig
from ..data import DatasetSplits, Preprocessing, eval_transform, make_loader, train_transform
from ..features import FeatureExtractor
from ..models import Classifier
from ..runtime import Runtime
from ._balance import BalancedSampler
from .strategy import Stage

if TYPE_CHECKING:
    from .distillation import Distiller
    from .pseudo_labels import PseudoLabels


@dataclass
class StageData:
    train: DataLoader
    val: DataLoader
    module: nn.Module  # what the loaders feed: the classifier, or only its head
    prepare: Callable
    cached: bool
    shuffle: torch.Generator | None = None  # reseeded per epoch (seed + epoch): exact resume
    balanced_sampler: bool = False  # --balance resample: batches drawn class-balanced

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Each epoch's order depends only on (seed, epoch), so a resumed run repeats it."""
        if self.shuffle is not None:
            self.shuffle.manual_seed(seed + epoch)
        if hasattr(self.train.sampler, "set_epoch"):
            self.train.sampler.set_epoch(epoch)


def build_stage_data(model: Classifier, stage: Stage, data: DatasetSplits, config: RunConfig, runtime: Runtime,
                     cache_dir: Path | None, distiller: Distiller | None = None,
                     pseudo: PseudoLabels | None = None) -> StageData:
    """`distiller`: a distillation run's, whose teacher's logits a stage on features carries beside
    each label (distillation.py). `pseudo`: train --unlabeled's pseudo-labelled images, trained on
    after the labelled ones, their labels class + num_classes (pseudo_labels.py)."""
    if stage.on_features:
        return _feature_data(model, data, config, runtime, cache_dir, distiller, pseudo)
    return _image_data(model, data, config, runtime, stage.augment, pseudo)


def _feature_data(model, data, config, runtime, cache_dir, distiller, pseudo) -> StageData:
    # Frozen backbone in eval mode + fixed inputs = fixed features: compute them once.
    dc = config.data
    extractor = FeatureExtractor(runtime, batch_size=max(dc.batch_size, 64), workers=dc.workers,
                                 cache_dir=cache_dir)
    features = {}
    for split, samples in (("train", data.train), ("val", data.val)):
        # under torchrun each process extracts a shard and all get every feature (feature_shards.py)
        features[split] = extractor.cached(model, samples, description=f"{split} features")
    generator = torch.Generator()
    sampler = _balanced_sampler(data, config) if config.train.balance == "resample" else None
    targets = (label_tensor(data.train.labels) if distiller is None
               else distiller.packed_targets(data.train, extractor))
    if pseudo is not None:  # the pseudo-labelled images' own cache entry (the one self-training read)
        pseudo_features = extractor.cached(model, pseudo.samples, description="pseudo-labelled features")
        features["train"] = torch.cat([torch.as_tensor(features["train"]), torch.as_tensor(pseudo_features)])
        targets = label_tensor(pseudo.encoded_labels(data.train.labels))
    train = DataLoader(TensorDataset(features["train"], targets),
                       batch_size=dc.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                       drop_last=lone_last_batch(len(targets), dc.batch_size))
    val = DataLoader(TensorDataset(features["val"], label_tensor(data.val.labels)), batch_size=256)
    return StageData(train, val, model.head, lambda x: x.to(runtime.device, non_blocking=True), True, generator,
                     sampler is not None)


def _image_data(model, data, config, runtime, augment, pseudo) -> StageData:
    dc, seed = config.data, config.train.seed
    samples = data.train if pseudo is None else pseudo.train_samples(data.train)
    prep = model.info.preprocessing
    train_sampler = val_sampler = None
    if config.train.balance == "resample":  # one balanced draw per epoch, sharded across processes
        train_sampler = _balanced_sampler(data, config, runtime.world_size, runtime.rank)
    elif runtime.distributed:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(range(len(samples)), runtime.world_size, runtime.rank,
                                           shuffle=True, seed=seed)
    train = make_loader(samples, train_transform(prep, augment, dc.random_erasing), batch_size=dc.batch_size,
                        shuffle=True, workers=dc.workers, device=runtime.device, seed=seed, sampler=train_sampler,
                        drop_last=lone_last_batch(len(samples), dc.batch_size))
    if runtime.distributed:
        val_sampler = list(range(runtime.rank, len(data.val), runtime.world_size))  # no padding
    val = make_loader(data.val, eval_transform(prep), batch_size=dc.batch_size, shuffle=False,
                      workers=dc.workers, device=runtime.device, sampler=val_sampler)
    return StageData(train, val, model, runtime.to_device, False, train.generator,
                     config.train.balance == "resample")


def label_tensor(labels: list) -> torch.Tensor:
    """Class indices (int64), or multi-hot rows (float32: binary cross-entropy's targets)."""
    tensor = torch.tensor(labels)
    return tensor.float() if tensor.ndim == 2 else tensor


def _balanced_sampler(data, config, num_replicas: int = 1, rank: int = 0) -> BalancedSampler:
    return BalancedSampler(data.train.labels, config.train.seed, num_replicas, rank)


def cache_decoded_images(data: DatasetSplits, prep: Preprocessing, data_config: DataConfig, runtime: Runtime,
                         cache_dir: Path) -> DatasetSplits:
    """Stages that train on images decode every image every epoch: decode them once instead
    (data/image_cache.py); under torchrun rank 0 builds the cache and the others read it."""
    from ..data import cache_images, default_image_cache_gb

    budget = default_image_cache_gb() if data_config.image_cache_gb is None else data_config.image_cache_gb
    cached = {}
    for split in ("train", "val"):
        if runtime.distributed and not runtime.is_main:
            runtime.barrier()  # rank 0 decodes and writes the cache first
        cached[split] = cache_images(getattr(data, split), prep, cache_dir, budget, workers=data_config.workers,
                                     description=f"{split} images", build=runtime.is_main)
        if runtime.distributed and runtime.is_main:
            runtime.barrier()
    return dataclasses.replace(data, **cached)


def lone_last_batch(count: int, batch_size: int) -> bool:
    """Drop a last batch of one image: BatchNorm in train mode cannot normalise it."""
    return count > batch_size and count % batch_size == 1
