"""--augment policies, --random-erasing, --mixup / --cutmix: transforms, soft targets, losses, CLI."""
from __future__ import annotations

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from tlearn.data._augment import POLICIES
from tlearn.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from tlearn.data.transforms import train_transform
from tlearn.run_folder import checkpoint
from tlearn.training._balance import Balance
from tlearn.training.callbacks.mixing import BatchMixer

from conftest import TINY_MODEL, kill_chain, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]
PREP = Preprocessing(36, 32, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


def _photo() -> Image.Image:
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (48, 40, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy(), "RGB")


def _transformed(augment: str, random_erasing: float = 0.0, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return train_transform(PREP, augment, random_erasing)(_photo())


def _one_hot(labels: torch.Tensor, classes: int, smoothing: float = 0.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).float() * (1 - smoothing) + smoothing / classes


def _mixed(mixer: BatchMixer, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """The mixer's output on a copy of `images`, and the (lambda, cutmix) it drew, from `seed`."""
    torch.manual_seed(seed)
    drawn = mixer.draw()
    torch.manual_seed(seed)
    return (*mixer(images.clone(), labels), drawn)


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_builds_and_changes_the_image(policy):
    # seed 1: AutoAugment applies each op of its sub-policy with a probability; at seed 0 it skips both
    default, augmented = _transformed("default", seed=1), _transformed(policy, seed=1)
    assert augmented.shape == default.shape == (3, 32, 32) and augmented.dtype == torch.float32
    assert not torch.equal(augmented, default)  # same seed, same crop and flip: the policy did this
    assert torch.equal(augmented, _transformed(policy, seed=1))  # and it draws from the seeded RNG


def test_random_erasing_with_probability_one_erases_a_rectangle():
    plain, erased = _transformed("default"), _transformed("default", random_erasing=1.0)
    changed = (plain != erased).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    assert 0 < changed.sum() <= 0.34 * 32 * 32  # the area range: 2-33% of the image
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.95  # one rectangle of noise (a noise value may equal the pixel)
    assert not torch.equal(_transformed("none", 1.0), _transformed("none"))  # explicit: even with --augment none


def test_mixup_blends_images_and_one_hot_targets_by_lambda():
    images, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 1])  # odd: the middle meets itself
    mixed, soft, counted, (lam, cutmix) = _mixed(BatchMixer(0.2, 0.0, 4), images, labels, seed=1)
    assert not cutmix and 0 < lam < 1
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    expected = lam * _one_hot(labels, 4) + (1 - lam) * _one_hot(labels.flip(0), 4)
    assert torch.allclose(soft, expected, atol=1e-6) and torch.allclose(soft.sum(1), torch.ones(5))
    assert torch.equal(counted, soft.argmax(1))  # the training accuracy counts the larger share


def test_cutmix_pastes_a_box_and_corrects_lambda_to_its_area():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 10, 12).clone()  # image i is all i
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    corrected = 0
    for seed in range(12):
        mixed, soft, _, (drawn, cutmix) = _mixed(BatchMixer(0.0, 1.0, 3), images, labels, seed)
        pasted = (mixed[0, 0] == 5).float().mean().item()  # image 0 receives image 5's box
        lam = 1 - pasted
        assert cutmix and torch.allclose(soft.sum(1), torch.ones(6))
        expected = lam * _one_hot(labels, 3) + (1 - lam) * _one_hot(labels.flip(0), 3)
        assert torch.allclose(soft, expected, atol=1e-6)
        corrected += abs(lam - drawn) > 0.02  # the box was clipped at a border: the area decides
    assert corrected > 0


def test_label_smoothing_is_inside_the_soft_targets():
    labels = torch.tensor([0, 3, 2, 1])
    _, soft, _, (lam, _) = _mixed(BatchMixer(0.4, 0.0, 4, label_smoothing=0.1), torch.randn(4, 3, 4, 4), labels, 2)
    expected = lam * _one_hot(labels, 4, 0.1) + (1 - lam) * _one_hot(labels.flip(0), 4, 0.1)
    assert torch.allclose(soft, expected, atol=1e-6) and soft.min() >= 0.1 / 4 - 1e-6
    assert torch.allclose(soft.sum(1), torch.ones(4))


def test_both_alphas_switch_between_mixup_and_cutmix():
    mixer = BatchMixer(0.2, 1.0, 3)
    torch.manual_seed(0)
    kinds = [mixer.draw()[1] for _ in range(200)]
    assert 70 < sum(kinds) < 130  # cutmix on about half the batches (timm's switch_prob 0.5)


def test_multi_label_targets_are_mixed_multi_hot_rows():
    rows = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    _, soft, counted, (lam, _) = _mixed(BatchMixer(0.4, 0.0, 3, multi_label=True), torch.randn(4, 3, 4, 4), rows, 0)
    assert torch.allclose(soft, lam * rows + (1 - lam) * rows.flip(0), atol=1e-6)
    assert counted is soft  # the F1 meter thresholds it at 0.5


@pytest.mark.parametrize("mode", ["none", "reweight", "resample", "logit-adjust"])
def test_balance_losses_take_soft_targets(mode):
    """Soft targets through each --balance loss: -sum_c w_c t_c log p_c, averaged over the batch
    (reweight's class weights on the soft targets; logit-adjust on the shifted logits)."""
    balance = Balance.from_labels(mode, [0, 0, 0, 0, 1, 1, 2], 3)
    loss_fn = balance.training_loss(0.0, torch.device("cpu"), sampled=mode == "resample")
    logits, soft = torch.randn(4, 3), torch.tensor([[0.7, 0.3, 0], [0, 0.6, 0.4], [0.5, 0, 0.5], [0, 0, 1.0]])
    shift = balance.logit_shift() if mode == "logit-adjust" else torch.zeros(3)
    weights = balance.loss_weights() if mode == "reweight" else torch.ones(3)
    expected = -(weights * soft * (logits - shift).log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss_fn(logits, soft), expected, atol=1e-6)


@pytest.mark.parametrize("flag,value,message", [
    ("--mixup", "-0.5", "--mixup must be an alpha of 0 (off) or more"),
    ("--cutmix", "nan", "--cutmix must be an alpha of 0 (off) or more"),
    ("--random-erasing", "1.5", "--random-erasing must be a probability in [0, 1]"),
    ("--augment", "augmix", "invalid choice"),
])
def test_bad_values_exit_2_with_one_line(flag, value, message, tmp_path, capsys):
    from tlearn.cli import main

    folder = make_folder(tmp_path / "data", per_class=2)
    try:
        code = main(["train", "--data", str(folder), *TINY, flag, value, "--out", str(tmp_path / "run")])
    except SystemExit as stop:
        code = stop.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_cli_trains_with_every_flag_and_warns_for_the_cached_probe(tmp_path):
    """Two stages: the probe on cached features ignores the image flags (one warning line), the
    fine-tuning uses them; config.yaml records them."""
    data, run = make_folder(tmp_path / "data", per_class=5), tmp_path / "run"
    result = run_cli("train", "--data", str(data), *TINY, "--strategy", "two-stage", "--head-epochs", "1",
                     "--epochs", "1", "--mixup", "0.2", "--cutmix", "1.0", "--augment", "randaugment",
                     "--random-erasing", "0.25", "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "trains the head on cached features" in line]
    assert len(warnings) == 1 and "--mixup 0.2, --cutmix 1, --random-erasing 0.25" in warnings[0], warnings
    data_config = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (data_config["augment"], data_config["mixup"], data_config["cutmix"], data_config["random_erasing"]) == \
        ("randaugment", 0.2, 1.0, 0.25)


def test_deterministic_resume_with_mixing_is_bit_identical(tmp_path):
    """Killed after the first epoch's commit and resumed: epoch 2 draws the same lambdas and boxes
    (torch's RNG state is in the commit), so the weights equal an uninterrupted run's."""
    data = make_folder(tmp_path / "data", per_class=4)
    train = ["--data", str(data), *TINY, "--deterministic", "--strategy", "finetune", "--epochs", "2",
             "--mixup", "0.4", "--cutmix", "1.0", "--augment", "trivialaugment", "--random-erasing", "0.5"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(train, ["commit:1"], reference, run)
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
