"""Freezing, BatchNorm modes, stages and learning rates."""
import pytest
import torch
from torch import nn

import tlearn
from tlearn.config import DataConfig, RunConfig, TrainConfig
from tlearn.errors import ConfigError
from tlearn.training.strategy import (
    freeze,
    parameter_counts,
    parameter_groups,
    plan_stages,
    set_train_mode,
    trainable_names,
    unfreeze,
)

from conftest import TINY_MODEL


def _batchnorms(model):
    return [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_batchnorm_statistics_do_not_move_while_the_head_trains():
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    freeze(model)
    before = [bn.running_mean.clone() for bn in _batchnorms(model)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_train_mode(model)
    assert model.head.training and not any(bn.training for bn in _batchnorms(model))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32) * 3 + 1), torch.randint(0, 3, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for old, bn in zip(before, _batchnorms(model)):
        assert torch.equal(old, bn.running_mean)


def test_partly_frozen_backbone_keeps_frozen_batchnorm_in_eval():
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    freeze(model, unfreeze_last=1)
    set_train_mode(model, bn_train=True)
    modes = {(bn.weight.requires_grad, bn.training) for bn in _batchnorms(model)}
    assert (False, False) in modes and (True, True) in modes and (False, True) not in modes


def test_finetuning_keeps_batchnorm_statistics_unless_asked():
    model = unfreeze(tlearn.create_model(TINY_MODEL, 3, weights="none"))
    set_train_mode(model)
    assert not any(bn.training for bn in _batchnorms(model))
    set_train_mode(model, bn_train=True)
    assert all(bn.training for bn in _batchnorms(model))


def _config(**train):
    return RunConfig(data=DataConfig(source="x"), train=TrainConfig(**train))


def test_stages_decide_their_solver_and_real_epoch_count():
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    plan = [(s.name, s.epochs, s.trains, s.on_features, s.solver)
            for s in plan_stages(_config(strategy="two-stage", head_epochs=2, epochs=3), model)]
    assert plan == [("linear-probe", 1, "head", True, "lbfgs"), ("finetune", 3, "all", False, "sgd")]
    sgd = plan_stages(_config(strategy="two-stage", head_epochs=2, epochs=3, head_solver="sgd"), model)[0]
    assert (sgd.epochs, sgd.on_features, sgd.solver) == (2, True, "sgd")
    augmented = plan_stages(RunConfig(data=DataConfig(source="x", probe_augment="default"),
                                      train=TrainConfig(strategy="linear-probe", epochs=4)), model)[0]
    assert (augmented.epochs, augmented.on_features, augmented.augment) == (4, False, "default")
    partly = plan_stages(_config(strategy="linear-probe", epochs=2, unfreeze_last=1), model)[0]
    assert (partly.epochs, partly.on_features, partly.solver, partly.unfreeze_last) == (2, False, "sgd", 1)
    partly.apply(model)
    trainable_backbone = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable_backbone and all(n.startswith(trainable_backbone[0].split(".")[0]) for n in trainable_backbone)


def test_as_is_keeps_the_users_flags():
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    freeze(model, unfreeze_last=1)
    names = trainable_names(model)
    before = parameter_counts(model)[0]
    stage, = plan_stages(_config(strategy="as-is", epochs=2), model, names)
    assert (stage.name, stage.epochs, stage.on_features) == ("as-is", 2, False)
    unfreeze(model)
    stage.apply(model)
    assert trainable_names(model) == names and parameter_counts(model)[0] == before
    freeze(model)
    head_only, = plan_stages(_config(strategy="as-is", epochs=2), model, trainable_names(model))
    assert head_only.on_features and head_only.solver == "sgd"


def test_unfreeze_last_only_for_probing_strategies():
    with pytest.raises(ConfigError, match="--unfreeze-last"):
        TrainConfig(strategy="finetune", unfreeze_last=1)
    with pytest.raises(ConfigError, match="--unfreeze-last"):
        TrainConfig(strategy="linear-probe", unfreeze_last=-1)


def test_backbone_lr_multiplier():
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    unfreeze(model)
    groups = {g["name"]: g["lr"] for g in parameter_groups(model, TrainConfig(lr=0.01, backbone_lr_mult=0.1))}
    assert groups["head"] == 0.01 and abs(groups["backbone"] - 0.001) < 1e-12
    freeze(model)
    names = {g["name"] for g in parameter_groups(model, TrainConfig(lr=0.01))}
    assert names == {"head", "head_no_decay"}
