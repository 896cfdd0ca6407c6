"""The fine-tuning recipe's parts, each a flag recorded in run_config.json: AdamW, warm-up then cosine,
label smoothing, an EMA of the weights (the model validated and kept), gradient clipping, radiograph
augmentation; bad values and a diverging run stop with one clear line."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from helpers import tiny_run
from safetensors.torch import load_file

from cxr.commands.train import main as train_main
from cxr.data.content import file_digest
from cxr.data.preprocessing import TrainAugmentation
from cxr.data.splits import load_split, load_split_content
from cxr.errors import CXRError
from cxr.metrics import selection_key
from cxr.models import model_spec
from cxr.training.build import lr_factor
from cxr.training.config import FILLED, PRESETS, Recipe, TrainConfig
from cxr.training.loop import set_cpu_threads
from cxr.training.resume import has_checkpoint


def _run(data, out, *extra):
    return train_main(
        [
            *tiny_run("logreg", 24, 2),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--batch-size",
            "16",
            *extra,
        ]
    )


def test_warmup_then_cosine_and_constant_schedules():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a < b for a, b in zip(f[:9], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01  # cosine down to ~0
    assert [lr_factor(s, total, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
        (["--ema-decay", "1.0"], "--ema-decay must be in (0, 1)"),
        (["--ema-decay", "0"], "--ema-decay must be in (0, 1)"),
        (["--warmup-epochs", "2"], "--warmup-epochs must be >= 0 and shorter than training (2 epochs)"),
        (["--clip-grad-norm", "0"], "--clip-grad-norm must be positive"),
        (["--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
        (["--layer-decay", "1.5"], "--layer-decay must be in (0, 1]"),
        (["--drop-path", "-0.1"], "--drop-path must be in [0, 1)"),
        (["--max-missed-rate", "-0.01"], "--max-missed-rate is the largest share"),
        (["--max-missed-rate", "1"], "above 0 and below 1 (e.g. 0.01 for 1%), got 1"),
        (["--max-missed-rate", "0"], "above 0 and below 1 (e.g. 0.01 for 1%), got 0"),
        (["--confidence", "1"], "--confidence must be above 0 and below 1"),
        (["--choose-on", "nowhere/cv"], "nowhere/cv: not a finished cross-validation"),
    ],
)
def test_bad_recipe_values_fail_before_any_work(subset, tmp_path, capsys, extra, message):
    assert _run(subset, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_full_recipe_runs_records_its_settings_and_keeps_the_ema_weights(subset, tmp_path):
    out = tmp_path / "run"
    assert (
        _run(
            subset,
            out,
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.05",
            "--lr-scheduler",
            "cosine",
            "--warmup-epochs",
            "0.5",
            "--label-smoothing",
            "0.1",
            "--ema-decay",
            "0.5",
            "--clip-grad-norm",
            "1.0",
            "--augment",
            "radiograph",
        )
        == 0
    )
    cfg = json.loads((out / "run_config.json").read_text())["config"]
    assert {
        k: cfg[k]
        for k in (
            "optimizer",
            "lr_scheduler",
            "warmup_epochs",
            "label_smoothing",
            "ema_decay",
            "clip_grad_norm",
            "augment",
        )
    } == {
        "optimizer": "adamw",
        "lr_scheduler": "cosine",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "ema_decay": 0.5,
        "clip_grad_norm": 1.0,
        "augment": "radiograph",
    }
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert history[-1]["lr"] < history[0]["lr"]  # the cosine decays
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    saved = load_file(str(out / "model" / "model.safetensors"))
    model_cfg = json.loads((out / "model" / "config.json").read_text())["cxr"]
    assert model_cfg["ema"] is True
    raw, ema = state["model"], state["ema"]
    assert not torch.allclose(raw["head.weight"], ema["head.weight"])  # the average is not the last weights
    if model_cfg["epoch"] == 2:  # the kept epoch is the last one here: its saved weights are the EMA's
        assert torch.equal(saved["head.weight"], ema["head.weight"])


def test_layer_decay_frozen_bn_statistics_and_drop_path_on_a_real_backbone(subset, tmp_path):
    out = tmp_path / "run"
    assert (
        train_main(
            [
                "--model",
                "tf_efficientnet_lite0",
                "--no-pretrained",
                "--data",
                str(subset),
                "--output-dir",
                str(out),
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--num-workers",
                "0",
                "--layer-decay",
                "0.5",
                "--freeze-bn-stats",
                "--drop-path",
                "0.2",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "run_config.json").read_text())["config"]
    assert (cfg["layer_decay"], cfg["freeze_bn_stats"], cfg["drop_path"]) == (0.5, True, 0.2)
    groups = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["optimizer"]["param_groups"]
    peak = {round(g["initial_lr"] / 1e-3, 6) for g in groups}  # the default peak lr 1e-3 times 0.5 ** depth
    assert max(peak) == 1.0 and 0.5 in peak and 0.25 in peak and min(peak) < 0.001
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}  # biases and norms without weight decay
    saved = load_file(str(out / "model" / "model.safetensors"))
    means = [v for k, v in saved.items() if k.endswith("running_mean")]
    # the statistics stayed at their initial values although the batch-norm scales trained
    assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)
    assert not all(torch.equal(v, torch.ones_like(v)) for k, v in saved.items() if k.endswith("bn1.weight"))
    assert "layer-wise LR decay 0.5" in (out / "report.md").read_text()


def test_a_resumed_run_keeps_its_split_even_without_the_split_file(subset, tmp_path):
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    assert _run(subset, first, "--epochs", "1") == 0
    default = load_split(first / "split.json")
    # every film of the split is known by its bytes too (the app recognises an upload of one by them)
    content = load_split_content(first / "split.json")
    assert sorted(content) == sorted(name for part in default.values() for name in part)
    assert all(digest == file_digest((subset / name).read_bytes()) for name, digest in content.items())
    custom = {
        "train": default["test"] + default["validation"],
        "validation": default["train"][:4],
        "test": default["train"][4:],
    }  # another split of the same images
    split_file = tmp_path / "custom.json"
    split_file.write_text(json.dumps({**json.loads((first / "split.json").read_text()), **custom}))
    assert _run(subset, resumed, "--epochs", "1", "--split-file", str(split_file)) == 0
    assert _run(subset, resumed, "--epochs", "2", "--resume") == 0  # no --split-file this time
    assert load_split(resumed / "split.json") == load_split(split_file)
    assert load_split_content(resumed / "split.json") == content  # written again by the resumed run
    history = json.loads((resumed / "history.json").read_text())["epochs"]
    assert len(history) == 2


def test_a_run_resumed_for_more_epochs_keeps_its_run_id_in_every_record(subset, tmp_path):
    from cxr.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    assert _run(subset, run.root, "--keep", "best") == 0
    first = run.run_ids()["metrics.json"]
    assert _run(subset, run.root, "--keep", "best", "--epochs", "3", "--resume") == 0  # a longer run than it started
    assert set(run.run_ids().values()) == {first}
    run.check_one_run()


def test_a_diverging_run_stops_clearly_and_keeps_nothing_from_it(subset, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(subset, out, "--lr", "1e30", "--optimizer", "sgd") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar: one error line
    assert last.startswith("error: the training loss became") and "(diverged)" in last
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_radiograph_augmentation_shifts_scales_and_changes_contrast_but_never_flips_vertically():
    torch.manual_seed(0)
    pixels = np.tile(np.arange(64, dtype=np.uint8)[:, None] * 3, (1, 64))  # brightness rises top to bottom
    aug = TrainAugmentation.named("radiograph")
    outs = [aug(pixels)[0].numpy().astype(float) for _ in range(20)]
    assert all(o.shape == (64, 64) for o in outs)
    assert len({o.tobytes() for o in outs}) == 20  # random every time
    for o in outs:  # top stays darker than bottom: no vertical flip
        assert o[8:20, 16:48].mean() < o[44:56, 16:48].mean()
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainAugmentation.named("mixup")


def test_flip_augmentation_only_mirrors():
    torch.manual_seed(0)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    outs = [TrainAugmentation.named("flip")(pixels)[0].numpy() for _ in range(20)]
    assert all(np.array_equal(o, pixels) or np.array_equal(o, pixels[:, ::-1]) for o in outs)
    assert any(np.array_equal(o, pixels[:, ::-1]) for o in outs) and any(np.array_equal(o, pixels) for o in outs)


def test_keep_last_keeps_the_last_epoch_whatever_validation_says(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--keep", "last", "--epochs", "3") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert metrics["kept_epoch"] == history["kept_epoch"] == 3 and metrics["keep"] == "last"
    assert json.loads((out / "model" / "config.json").read_text())["cxr"]["epoch"] == 3
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], state["model"][k]) for k in saved)  # the last weights, not an earlier epoch's
    assert "the last epoch (3)" in (out / "report.md").read_text()


def test_final_fit_refits_on_training_and_validation_with_the_holdout_temperature(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--final-fit", "--keep", "last", "--epochs", "2") == 0
    hold, refit = (json.loads((d / "split.json").read_text()) for d in (out / "holdout", out))
    assert refit == hold  # the hold-out split, as it was; the refit trains on its training + validation parts
    assert len(hold["content"]) == sum(len(hold[p]) for p in ("train", "validation", "test"))  # digests in both
    run = json.loads((out / "run_config.json").read_text())
    assert run["images"]["train"] == len(hold["train"]) + len(hold["validation"])
    hold_metrics = json.loads((out / "holdout" / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    t = hold_metrics["calibration"]["temperature"]
    assert json.loads((out / "model" / "config.json").read_text())["cxr"]["temperature"] == pytest.approx(t)
    assert metrics["calibration"]["temperature"] == pytest.approx(t) and "holdout/" in metrics["calibration"]["note"]
    assert metrics["final_fit"] == {"holdout": "holdout", "validation_held_out": False}
    assert metrics["kept_epoch"] == hold_metrics["kept_epoch"] == 2
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(out / "holdout" / "model" / "model.safetensors"))
    assert not torch.equal(a["head.weight"], b["head.weight"])  # a second model, trained on more images
    assert "refit on training + validation" in (out / "report.md").read_text()
    # resuming the finished run reuses both parts and gives the same model
    assert _run(subset, out, "--final-fit", "--keep", "last", "--epochs", "2", "--resume") == 0
    assert torch.equal(load_file(str(out / "model" / "model.safetensors"))["head.weight"], a["head.weight"])
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    # the split file is the hold-out run's, valid as --split-file; training took its validation part too
    assert load_split(out / "split.json") == {p: hold[p] for p in ("train", "validation", "test")}
    assert run["data_source"]["splits"]["train"].endswith("with the validation images added (--final-fit)")
    # killed in the hold-out run: a plain --resume (no recipe flags) carries on as a final fit
    for f in (out / "metrics.json", out / "checkpoint.pt", out / "holdout" / "metrics.json"):
        f.unlink()
    assert has_checkpoint(out, final_fit=True) and not has_checkpoint(out)
    assert (
        train_main(
            [
                "--model",
                "logreg",
                "--data",
                str(subset),
                "--output-dir",
                str(out),
                "--image-size",
                "24",
                "--num-workers",
                "0",
                "--batch-size",
                "16",
                "--epochs",
                "2",
                "--resume",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    assert (out / "holdout" / "metrics.json").is_file()


def test_final_fit_with_keep_best_refits_for_the_kept_epoch_count(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--final-fit", "--keep", "best", "--epochs", "3") == 0
    hold_metrics = json.loads((out / "holdout" / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == hold_metrics["kept_epoch"] == hold_metrics["best_epoch"]


def test_keep_best_keeps_the_best_validation_epoch(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--keep", "best", "--epochs", "4", "--lr", "3e-3") == 0
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    keys = [(h["val_accuracy"], -h["val_critical_to_normal"]) for h in history["epochs"]]
    best = 1 + max(range(len(keys)), key=lambda i: (keys[i], -i))  # the first of equals
    assert history["kept_epoch"] == metrics["kept_epoch"] == metrics["best_epoch"] == best
    assert json.loads((out / "model" / "config.json").read_text())["cxr"]["epoch"] == best
    assert metrics["validation"]["accuracy"] == pytest.approx(history["epochs"][best - 1]["val_accuracy"])
    assert selection_key(metrics["validation"])[0] == max(k[0] for k in keys)


def test_presets_fill_only_the_recipe_flags_not_given(sample_dir, tmp_path):
    base = dict(model="tf_efficientnet_lite0", data=str(sample_dir), output_dir=str(tmp_path / "x"))
    default = TrainConfig(**base).resolve()
    assert {k: getattr(default, k) for k in PRESETS["default"]} == PRESETS["default"]
    paper = TrainConfig(**base, preset="paper").resolve()
    spec = model_spec("tf_efficientnet_lite0")
    assert (paper.optimizer, paper.lr, paper.lr_scheduler, paper.augment, paper.keep, paper.final_fit) == (
        "adam",
        5e-4,
        "constant",
        "study",
        "best",
        False,
    )
    assert (paper.epochs, paper.batch_size) == (spec.epochs, spec.batch_size)  # the study's for the model
    mixed = TrainConfig(**base, preset="paper", batch_size=16, keep="last").resolve()
    assert (mixed.batch_size, mixed.keep, mixed.lr, mixed.epochs) == (16, "last", 5e-4, spec.epochs)
    assert "--preset must be one of" in _error(lambda: TrainConfig(**base, preset="sota").resolve())


def test_cpu_threads_flag_sets_torch_threads(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--cpu-threads", "1", "--epochs", "1") == 0
    assert json.loads((out / "run_config.json").read_text())["torch_threads"] == 1


def _error(fn) -> str:
    with pytest.raises(CXRError) as e:
        fn()
    return str(e.value)


def test_a_resumed_run_keeps_the_recipe_it_started_with_unless_told(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--epochs", "1", "--preset", "paper", "--batch-size", "16") == 0
    # no --preset now: the run goes on with the study's recipe it began with; the epochs given are new
    assert _run(subset, out, "--epochs", "2", "--resume") == 0
    cfg = json.loads((out / "run_config.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["augment"], cfg["keep"], cfg["epochs"]) == (
        "adam",
        5e-4,
        "study",
        "best",
        2,
    )
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    # a recipe value given that differs from the checkpoint's is refused, as before
    assert _run(subset, out, "--epochs", "3", "--resume", "--optimizer", "adamw") == 2


def test_a_resumed_run_keeps_the_recipe_it_was_started_with(subset, tmp_path):
    """``--resume`` with only ``--epochs`` given: the preset and every recipe setting the run started with are its
    checkpoint's, not the defaults of now."""
    out = tmp_path / "run"
    assert _run(subset, out, "--epochs", "1", "--preset", "paper") == 0
    assert _run(subset, out, "--epochs", "2", "--resume") == 0
    cfg = json.loads((out / "run_config.json").read_text())["config"]
    assert (cfg["preset"], cfg["keep"], cfg["final_fit"], cfg["optimizer"], cfg["epochs"]) == (
        "paper",
        "best",
        False,
        "adam",
        2,
    )


def test_keep_last_resumed_with_no_epoch_left_keeps_the_weights_in_hand(subset, tmp_path):
    out = tmp_path / "run"
    assert _run(subset, out, "--keep", "last", "--epochs", "2") == 0
    # as if killed after epoch 2's checkpoint but before the kept model was written
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    state["kept"] = None
    torch.save(state, out / "checkpoint.pt")
    import shutil

    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    assert _run(subset, out, "--keep", "last", "--epochs", "2", "--resume") == 0
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], state["model"][k]) for k in saved)
    assert json.loads((out / "metrics.json").read_text())["kept_epoch"] == 2


def test_cpu_threads_default_honours_omp_num_threads_above_one(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_cpu_threads(None, 1) == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch sets by itself
        assert set_cpu_threads(None, 1) == len(os.sched_getaffinity(0))
        assert set_cpu_threads(None, 2) == max(1, len(os.sched_getaffinity(0)) // 2)
        assert set_cpu_threads(1, 1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_shipped_out_of_fold_predictions_are_the_default_recipes_on_the_sample(sample_dir, tmp_path):
    # --choose-on auto: a default run on the sample takes its operating point from the bundle only when the bundle
    # was made with the recipe the flags resolve to now (a default changed without remaking it would fail here)
    from cxr.data.data_source import load_data_source
    from cxr.training.held_out import bundled_for

    films = load_data_source(str(sample_dir), None, None).dataset
    cfg = TrainConfig(model="tf_efficientnet_lite0", data=str(sample_dir), output_dir=str(tmp_path / "x"))
    carried, why = bundled_for(cfg.resolve().to_dict(), films)
    assert carried is not None and len(carried) == 600 and sorted(np.bincount(carried.labels)) == [150] * 4
    assert "names and content" in carried.description and "are the bundled" in why
    carried, why = bundled_for(dataclasses.replace(cfg, clahe=True).resolve().to_dict(), films)
    assert carried is None and "recipe" in why


def test_a_600_film_set_that_is_not_the_sample_never_gets_the_bundle(sample_dir, tmp_path):
    """The sample's files under the same names with one film per class given other pixels, and the sample less one
    film plus another under a new name: neither is the set the bundled predictions were made on, so --choose-on
    auto falls back to the run's own validation films, and says why."""
    import shutil

    from PIL import Image, ImageOps

    from cxr.data.data_source import load_data_source
    from cxr.training.held_out import bundled_for

    recipe = TrainConfig(model="tf_efficientnet_lite0", data="x", output_dir=str(tmp_path / "x")).resolve().to_dict()
    changed, inverted = tmp_path / "changed", set()
    for film in sorted(sample_dir.rglob("*.png")):
        if "masks" in film.parts:
            continue
        target = changed / film.relative_to(sample_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent in inverted:
            shutil.copyfile(film, target)
            continue
        inverted.add(target.parent)  # the first film of each class
        with Image.open(film) as im:
            ImageOps.invert(im.convert("L")).save(target)
    films = load_data_source(str(changed), None, None).dataset
    assert len(films) == 600 and set(films["file_name"]) == set(
        load_data_source(str(sample_dir), None, None).dataset["file_name"]
    )
    carried, why = bundled_for(recipe, films)
    assert carried is None and f"but {len(inverted)} of them other content" in why and len(inverted) == 4

    renamed = next((changed / "Normal").rglob("*.png"))
    renamed.rename(renamed.with_name("another-film.png"))
    carried, why = bundled_for(recipe, load_data_source(str(changed), None, None).dataset)
    assert carried is None and "not the 600 films" in why


def test_a_resolved_recipe_is_frozen_and_sets_every_preset_field(sample_dir, tmp_path):
    """``TrainConfig.resolve`` gives a ``Recipe``: no field left to "take the preset's value", none changeable."""
    raw = TrainConfig(model="logreg", data=str(sample_dir), output_dir=str(tmp_path / "x"))
    assert all(getattr(raw, k) is None for k in FILLED)  # as given: the preset fills them
    recipe = raw.resolve()
    assert isinstance(recipe, Recipe) and all(getattr(recipe, k) is not None for k in FILLED)
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    assert all(fields[k].default is dataclasses.MISSING and "Optional" not in str(fields[k].type) for k in FILLED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 1.0
    assert recipe.resolve() == recipe  # resolving again changes nothing
