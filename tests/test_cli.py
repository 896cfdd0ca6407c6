"""One CLI source: train_accelerate.py's flags are made from TrainConfig's fields, so the two cannot disagree."""

import dataclasses

from cxr.commands.eval import build_parser as build_eval_parser
from cxr.commands.train import build_parser as build_train_parser
from cxr.training.config import TrainConfig


def _flags(parser):
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_field_is_a_flag_with_help_and_the_same_default(monkeypatch):
    monkeypatch.delenv("CXR_DATA", raising=False)
    flags = _flags(build_train_parser())
    assert set(flags) == {f.name for f in dataclasses.fields(TrainConfig)}
    for name, action in flags.items():
        assert action.help and len(action.help) > 20, name
    args = build_train_parser().parse_args(["--model", "logreg", "--data", "d", "--output-dir", "o"])
    assert TrainConfig(**vars(args)) == TrainConfig(model="logreg", data="d", output_dir="o")
    assert {n for n, a in flags.items() if a.required} == {"model", "data", "output_dir"}


def test_flag_kinds_follow_the_field_types(monkeypatch):
    monkeypatch.setenv("CXR_DATA", "/data/from/env")
    p = build_train_parser()
    args = p.parse_args(
        [
            "--model",
            "logreg",
            "--output-dir",
            "o",
            "--epochs",
            "3",
            "--lr",
            "2e-3",
            "--no-pretrained",
            "--final-fit",
            "--clahe",
            "--resume",
            "--optimizer",
            "sgd",
        ]
    )
    assert (args.data, args.epochs, args.lr, args.pretrained, args.final_fit, args.clahe, args.resume) == (
        "/data/from/env",
        3,
        2e-3,
        False,
        True,
        True,
        "auto",
    )
    assert _flags(p)["optimizer"].choices == ("adam", "adamw", "sgd")
    text = " ".join(p.format_help().split())  # the preset's values, computed into --preset's help
    assert (
        "default (chosen by cross-validation; docs/training.md, 'Choosing the recipe': --optimizer adamw --lr 0.001"
        in text
    )


def test_eval_shares_the_data_flags_declared_on_the_config():
    train, evaluation = _flags(build_train_parser()), _flags(build_eval_parser())
    for name in ("dataset_revision", "dataset_config", "cache_dir", "skip_bad_images"):
        assert evaluation[name].help == train[name].help and evaluation[name].default == train[name].default
