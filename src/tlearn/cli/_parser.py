"""The command line's parser: one subcommand per job, their flags (train's from the config
fields, cli_flags.py), one-line argparse errors with exit code 2. cli.py runs the commands."""
from __future__ import annotations

import argparse

from ..config import DEVICES, SMALL_IMAGES
from ._distill_flags import add_distill_flags
from ._flags import PSEUDO_FIELDS, add_config_flags, add_data_flag, add_table_flags
from ._label_flags import add_label_flags, add_suggest_flags
from ._select_flags import add_select_flags

# The demo: the bundled Lite0 on the embedded digits, small and quick (README, Quick start).
DEMO_FIXED = {"source": "digits", "name": "efficientnet_lite0", "weights": "default", "strategy": "two-stage",
              "unfreeze_last": 0, "labels": None, "path_col": None, "label_col": None, "label_delim": None}
DEMO_DEFAULTS = {"epochs": 4, "head_epochs": 1, "image_size": 64, "augment": "none"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tlearn", description="Transfer learning for PyTorch image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="debug messages too")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbosity], **kwargs)

    demo = command("demo", help="offline demo: bundled EfficientNet-Lite0 on scikit-learn digits")
    demo.add_argument("--out", default=None, help="run folder (default runs/<timestamp>)")
    _add_overwrite_flag(demo)
    add_config_flags(demo, skip=frozenset(DEMO_FIXED) | PSEUDO_FIELDS, defaults=DEMO_DEFAULTS)

    train = command("train", help="train a classifier on a folder of images or a dataset")
    train.add_argument("--out", default=None, help="run folder (default runs/<timestamp>)")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue an interrupted run")
    _add_overwrite_flag(train)
    add_config_flags(train)

    # distillation
    add_distill_flags(command("distill", help="train a smaller student on a teacher run's soft targets"))

    # the Hugging Face Hub
    push = command("push", help="put a run on the Hugging Face Hub: timm's format, a model card from the run")
    push.add_argument("run")
    push.add_argument("--repo-id", required=True, help="USER/NAME on the Hub (token: HF_TOKEN or `hf auth login`)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--local-dir", default=None, metavar="DIR", help="write the Hub folder here; upload nothing")
    push.add_argument("--audit", default=None, metavar="DIR", help="a `tlearn audit` folder of the run's data: its "
                                                                  "findings go into the model card")

    _add_lr_find_flags(command("lr-find", help="sweep the LR (fastai's lr_find): plot, csv and a suggested LR"))

    _add_eval_flags(command("eval", help="evaluate a run folder's model on a dataset"))

    _add_predict_flags(command("predict", help="predict labels of image files, folders or globs"))

    export = command("export", help="export a run's model to ONNX or TorchScript, parity-checked")
    export.add_argument("run")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    export.add_argument("--output", default=None, help="default: RUN/export/model.onnx or model.torchscript.pt")
    export.add_argument("--quantize", choices=("int8",), default=None,
                        help="static int8 (onnxruntime), kept only if it passes the accuracy gate: "
                             "RUN/export/model.int8.onnx")
    export.add_argument("--calibration-images", type=int, default=256, help="training images for int8 ranges")
    export.add_argument("--max-drop", type=float, default=1.0,
                        help="refuse the int8 graph if top-1 (multi-label: mAP) falls by more points (default 1)")

    _add_serve_flags(command("serve", help="serve a run's model over HTTP: batched predictions and a web page"))

    _add_features_flags(command("features", help="write backbone embeddings of a dataset to an .npz"))

    add_select_flags(command("select", help="rank backbones and input sizes on your data by a linear probe"))
    _add_audit_flags(command("audit", help="check a data set before training: duplicates, label errors, balance, "
                                           "odd images"))

    add_suggest_flags(command("suggest", help="which images of a folder to label next (typical, diverse, with "
                                               "the probe's guess)"))
    add_label_flags(command("label", help="a labelling page that learns as you answer (or --review an audit's "
                                           "findings)"))

    models = command("models", help="list model names; marks weights usable offline")
    models.add_argument("pattern", nargs="?", default=None, help="glob or substring, e.g. 'resnet*' or timm:vit")
    models.add_argument("--groups", metavar="NAME", default=None,
                        help="print NAME's backbone block groups (--unfreeze gradual, --layer-decay)")
    return parser


def _add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="--out holds a run: delete that run's files (only those) and train anew")


def _add_eval_flags(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("run")
    add_data_flag(evaluate)
    evaluate.add_argument("--split", default=None, choices=("val", "test", "train", "all"),
                          help="default: val, all of a folder without train/ and val/, a table's test rows")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--workers", type=int, default=None)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--report", action="store_true", help="write report.html for this data into RUN")
    evaluate.add_argument("--engine", default="auto", metavar="ENGINE",
                          help="auto (onnxruntime for 256 images or more on the CPU, else PyTorch), onnx, int8 "
                               "(RUN/export/model.int8.onnx), torch, or an .onnx file tlearn export wrote")
    add_table_flags(evaluate)
    _add_tta_flags(evaluate)


def _add_predict_flags(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("run")
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument("--output", default=None, help="write predictions to a .csv or .json file")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", choices=DEVICES, default="cpu")
    predict.add_argument("--resume", action="store_true",
                         help="--output F.csv or F.json holds the rows of an interrupted prediction: skip those files")
    predict.add_argument("--engine", default="auto", metavar="ENGINE",
                         help="auto (onnxruntime for 256 images or more on the CPU, else PyTorch), onnx, int8 "
                              "(RUN/export/model.int8.onnx), torch, or an .onnx file tlearn export wrote")
    predict.add_argument("--min-confidence", type=float, default=None, metavar="P",
                         help="answer 'unknown' when the calibrated top probability is below P (0: always answer; "
                              "default: the run's own, from train --coverage)")
    predict.add_argument("--coverage", type=float, default=None, metavar="C",
                         help="answer a fraction C of images: the threshold that answers C of the validation split")
    _add_tta_flags(predict)


def _add_serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("run")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    serve.add_argument("--engine", default="auto", metavar="ENGINE",
                       help="auto or onnx (the run's onnxruntime graph), int8 (RUN/export/model.int8.onnx), "
                            "torch, or an .onnx file tlearn export wrote")
    serve.add_argument("--max-batch", type=int, default=16, help="images per engine batch (default 16)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0,
                       help="how long a request waits for others to join its batch (default 10)")
    serve.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default 20)")
    serve.add_argument("--min-confidence", type=float, default=None, metavar="P",
                       help="answer 'unknown' below this calibrated probability (default: the run's own)")
    serve.add_argument("--coverage", type=float, default=None, metavar="C",
                       help="or the threshold that answers this share of the validation images")


def _add_audit_flags(audit: argparse.ArgumentParser) -> None:
    add_data_flag(audit)
    audit.add_argument("--out", required=True, help="folder for duplicates.csv, label_issues.csv, audit.html")
    audit.add_argument("--model", default="efficientnet_lite0", help="backbone for the features")
    audit.add_argument("--weights", default="default")
    audit.add_argument("--batch-size", type=int, default=64)
    audit.add_argument("--device", choices=DEVICES, default="auto")
    add_table_flags(audit)


def _add_tta_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the logits of each image and its horizontal flip")
    parser.add_argument("--tta-crops", type=int, default=1,
                        help="5: average five crops (corners and centre) of the resized image, each with its flip "
                             "under --tta (default 1: the centre crop)")


# Flags of train that mean nothing to one sweep of at most an epoch. The sweep is the training
# loop, so mixup, cutmix and accumulation apply to it as they do in training.
LR_FIND_SKIPPED = frozenset({"strategy", "epochs", "head_epochs", "head_solver", "patience", "min_delta", "monitor",
                             "lr", "warmup_epochs", "report", "tensorboard", "unfreeze_last", "probe_augment",
                             "ema_decay", "unfreeze", "coverage"})


def _add_lr_find_flags(lr_find: argparse.ArgumentParser) -> None:
    lr_find.add_argument("--strategy", choices=("finetune", "linear-probe"), default="finetune",
                         help="finetune: everything, backbone at --backbone-lr-mult x the LR; linear-probe: the "
                              "head on cached features (default finetune)")
    lr_find.add_argument("--out", default=".", help="folder for lr_find.csv and lr_find.png (default: here)")
    add_config_flags(lr_find, skip=LR_FIND_SKIPPED | PSEUDO_FIELDS)


def _add_features_flags(features: argparse.ArgumentParser) -> None:
    features.add_argument("run", nargs="?", default=None, help="a run folder (instead of --model)")
    features.add_argument("--model", default=None, help="model name, when no run folder is given")
    features.add_argument("--weights", default="default")
    add_data_flag(features)
    features.add_argument("--out", required=True, help="output .npz")
    features.add_argument("--image-size", type=int, default=None)
    features.add_argument("--small-images", choices=SMALL_IMAGES, default="auto",
                          help="with --model: as in train (a run folder keeps its own preprocessing)")
    features.add_argument("--batch-size", type=int, default=64)
    features.add_argument("--device", choices=DEVICES, default="auto")
    features.add_argument("--workers", type=int, default=None)
    features.add_argument("--backend", "--engine", choices=("auto", "torch"), default="auto",
                          help="auto: onnxruntime on CPU when it matches PyTorch")
    features.add_argument("--no-cache", dest="use_cache", action="store_false")
    features.add_argument("--cache-dir", default=None)
    add_table_flags(features)
