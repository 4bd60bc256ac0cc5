"""Block groups for every model family; --unfreeze gradual and --layer-decay over them."""
import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_models import FAMILIES

import tlearn
from tlearn.config import TrainConfig
from tlearn.models.block_groups import block_groups
from tlearn.run_folder import checkpoint
from tlearn.runtime import seed_everything
from tlearn.training._layer_groups import unfreeze_top
from tlearn.training.strategy import parameter_groups

from conftest import TINY_MODEL, kill_chain, make_folder

TIMM_TINY = [(TINY_MODEL, 32), ("timm:test_vit", 160), ("timm:test_efficientnet", 32)]
TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]
TIMING_COLUMNS = ("seconds", "images_per_s", "data_seconds", "compute_seconds", "optimizer_seconds",
                  "eval_seconds")


def _first_use(model: tlearn.Classifier, size: int) -> dict[str, int]:
    """For each backbone parameter, when (in call order) the innermost module holding it that
    ran first ran (MultiheadAttention reads its out_proj's weight without calling it)."""
    order: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs) -> None:  # returns nothing: a value would replace the inputs
            order.setdefault(name, len(order))
        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in model.backbone.named_modules()]
    model.eval()
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    first = {}
    for name, parameter in model.backbone.named_parameters():
        if id(parameter) in backbone_ids:
            path = name.rsplit(".", 1)[0] if "." in name else ""
            while path not in order:
                path = path.rsplit(".", 1)[0] if "." in path else ""
            first[f"backbone.{name}"] = order[path]
    return first


@pytest.mark.parametrize("name,size", FAMILIES + TIMM_TINY)
def test_block_groups_partition_the_backbone_in_forward_order(name, size):
    model = tlearn.create_model(name, num_classes=5, weights="none")
    groups = block_groups(model)
    assert len(groups) >= 2, name
    names = [n for group in groups for n in group.parameter_names]
    parameters = dict(model.named_parameters())
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    expected = [n for n, p in parameters.items() if id(p) in backbone_ids]
    assert len(names) == len(set(names)) and sorted(names) == sorted(expected), name  # each exactly once
    assert all(group.num_parameters == sum(parameters[n].numel() for n in group.parameter_names) for group in groups)
    first_use = _first_use(model, size)
    index = {n: i for i, group in enumerate(groups) for n in group.parameter_names}
    in_call_order = [index[n] for n in sorted(first_use, key=first_use.get)]
    assert in_call_order == sorted(in_call_order), f"{name}: groups out of forward order {in_call_order}"


@pytest.mark.parametrize("name", [TINY_MODEL, "timm:test_vit"])
def test_layer_decay_lr_is_head_lr_times_decay_to_the_depth(name):
    model = tlearn.create_model(name, num_classes=3, weights="none")
    groups = block_groups(model)
    optimiser_groups = parameter_groups(model, TrainConfig(lr=0.02, layer_decay=0.6))
    by_id = {id(p): g for g in optimiser_groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in optimiser_groups) == len(list(model.parameters()))
    for p in model.head_parameters():
        assert by_id[id(p)]["lr"] == 0.02
    parameters = dict(model.named_parameters())
    for index, group in enumerate(groups):
        depth = len(groups) - index  # the top group is depth 1
        for n in group.parameter_names:
            assert by_id[id(parameters[n])]["lr"] == pytest.approx(0.02 * 0.6 ** depth), (n, depth)
            assert (by_id[id(parameters[n])]["weight_decay"] == 0.0) == (parameters[n].ndim <= 1), n
    with pytest.raises(tlearn.errors.ConfigError, match="replaces --backbone-lr-mult"):
        TrainConfig(layer_decay=0.6, backbone_lr_mult=0.5)


def test_unfreeze_top_trains_the_head_and_the_top_groups():
    model = tlearn.create_model(TINY_MODEL, num_classes=3, weights="none")
    groups = block_groups(model)
    head = sum(p.numel() for p in model.head_parameters())
    counts = []
    for count in range(1, len(groups) + 2):
        unfreeze_top(model, groups, count)
        counts.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    tops = [head + sum(g.num_parameters for g in groups[len(groups) - k:]) for k in range(1, len(groups) + 1)]
    assert counts == tops + [tops[-1]]
    assert not unfreeze_top(model, groups, len(groups))  # nothing changed


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_gradual_unfreezing_trains_one_more_group_each_epoch(tmp_path):
    """Epoch k trains the head and the top k groups; what is frozen does not move (not even by
    weight decay), though the optimiser held it from the start."""
    from tlearn.cli import main

    data = make_folder(tmp_path / "data", per_class=4)
    model = tlearn.create_model(TINY_MODEL, num_classes=3, weights="none")
    groups = block_groups(model)
    head = sum(p.numel() for p in model.head_parameters())
    epochs = len(groups) + 1
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--strategy", "finetune", "--epochs", str(epochs),
                 "--unfreeze", "gradual", "--layer-decay", "0.5", "--out", str(run)]) == 0
    trainable = [int(row["trainable_params"]) for row in _rows(run)]
    tops = [head + sum(g.num_parameters for g in groups[len(groups) - k:]) for k in range(1, len(groups) + 1)]
    assert trainable == tops + [tops[-1]]
    lrs = [float(row["lr_backbone"]) / float(row["lr_head"]) for row in _rows(run)[:-1]]
    assert lrs == pytest.approx([0.5] * (epochs - 1), rel=1e-4)  # lr_backbone: the top group's, head LR x 0.5

    one_epoch = tmp_path / "one"
    assert main(["train", "--data", str(data), *TINY, "--strategy", "finetune", "--epochs", "1", "--seed", "4",
                 "--unfreeze", "gradual", "--out", str(one_epoch)]) == 0
    seed_everything(4)  # api.train seeds before building: the same initial weights
    initial = tlearn.create_model(TINY_MODEL, num_classes=3, weights="none").state_dict()
    trained = load_file(str(one_epoch / checkpoint.MODEL_FILE))
    top = set(groups[-1].parameter_names)
    for group in groups:
        for n in group.parameter_names:
            assert torch.equal(trained[n], initial[n]) == (n not in top), n


def test_gradual_with_layer_decay_resumes_bit_identical(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    train = ["--data", str(data), *TINY, "--deterministic", "--seed", "2", "--strategy", "finetune",
             "--epochs", "3", "--unfreeze", "gradual", "--layer-decay", "0.75"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    # killed after epoch 1's commit (the resume unfreezes the second group), then mid-epoch 3
    kill_chain(train, ["commit:1", "step:6"], reference, run)
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    strip = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in _rows(run)]
    assert strip == [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in _rows(reference)]
    assert len(strip) == 3 and len({row["trainable_params"] for row in strip}) == 3


@pytest.mark.parametrize("args,message", [
    (["--layer-decay", "0"], "--layer-decay must be above 0 and at most 1"),
    (["--layer-decay", "1.5"], "--layer-decay must be above 0 and at most 1"),
    (["--layer-decay", "0.7", "--backbone-lr-mult", "0.2"], "replaces --backbone-lr-mult"),
    (["--unfreeze", "gradual", "--strategy", "linear-probe"], "--unfreeze gradual applies to finetune"),
    (["--unfreeze", "sometimes"], "invalid choice"),
])
def test_bad_values_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    from tlearn.cli import main

    data = make_folder(tmp_path / "data", per_class=2)
    try:
        code = main(["train", "--data", str(data), *TINY, *args, "--out", str(tmp_path / "run")])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_models_groups_prints_the_block_groups(capsys):
    from tlearn.cli import main

    assert main(["models", "--groups", TINY_MODEL]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{TINY_MODEL}: 5 block groups, input to output")
    assert [line.split()[1] for line in lines[1:]] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
