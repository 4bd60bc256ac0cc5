"""Freezing, BatchNorm modes, stages and learning rates."""
import torch
from torch import nn

import tlearn
from tlearn.config import TrainConfig
from tlearn.strategy import freeze, parameter_groups, plan_stages, set_train_mode, unfreeze

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


def test_two_stage_plan_and_backbone_lr_multiplier():
    stages = plan_stages(TrainConfig(strategy="two-stage", head_epochs=2, epochs=3))
    assert [(s.name, s.epochs, s.train_backbone) for s in stages] == [
        ("linear-probe", 2, False), ("finetune", 3, True)]
    model = tlearn.create_model(TINY_MODEL, 3, weights="none")
    unfreeze(model)
    groups = {g["name"]: g["lr"] for g in parameter_groups(model, TrainConfig(lr=0.01, backbone_lr_mult=0.1))}
    assert groups["head"] == 0.01 and abs(groups["backbone"] - 0.001) < 1e-12
    freeze(model)
    names = {g["name"] for g in parameter_groups(model, TrainConfig(lr=0.01))}
    assert names == {"head", "head_no_decay"}
