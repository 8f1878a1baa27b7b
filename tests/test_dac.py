"""DaC (ddb/methods/dac.py, stages/dac.py) computes what its reference code computes, trains
end to end on a tiny table, and its config names its keys.

The reference tests transcribe the decisive code (repository, file and function cited
above each, written as there with the same numpy / torch / scipy calls, `.cuda()` dropped):
fhn98/DaC @854537d (`release`), and the two libraries it calls, pytorch-grad-cam 1.5.2
(jacobgil/pytorch-grad-cam) and kneed 0.8.5 (arvkevi/kneed @01c2aab); ours and theirs get
the same seeded inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import interpolate
from scipy.signal import argrelextrema
from torch import nn

from ddb import paths
from ddb.config import ConfigError, load_config
from ddb.data.dataset import load_dataset, split_table
from ddb.methods import LABELS, dac
from ddb.models.classifier import build_classifier, load_classifier, save_classifier
from ddb.stages import dac as dac_stage
from ddb.stages.evaluate import trained_models
from tests.conftest import REPO, default_section, indexed, tiny_config

BACKBONE = REPO / "models/backbone/resnet18.pth"


def backbone_model(seed: int = 0) -> nn.Module:
    """A ResNet-18 with the committed backbone's features (CAMs with structure) and a
    seeded 2-way head."""
    torch.manual_seed(seed)
    return build_classifier("resnet18", 2, weights=BACKBONE).eval()


# ---- kneed 0.8.5: arvkevi/kneed @01c2aab, kneed/knee_locator.py --------------------------


def reference_elbow(x, y, S=1.0):
    # KneeLocator.__init__ and find_knee as there, for DaC's call (adaptive_mask.py,
    # save_masks): curve="convex", direction="increasing", interp_method="interp1d",
    # online=True; returns .elbow (= .knee)
    x = np.array(x)
    y = np.array(y)
    uspline = interpolate.interp1d(x, y)
    Ds_y = uspline(x)
    x_normalized = (x - min(x)) / (max(x) - min(x))
    y_normalized = (Ds_y - min(Ds_y)) / (max(Ds_y) - min(Ds_y))
    y_normalized = np.flip(y_normalized.max() - y_normalized)  # transform_y
    y_difference = y_normalized - x_normalized
    x_difference = x_normalized.copy()
    maxima_indices = argrelextrema(y_difference, np.greater_equal)[0]
    minima_indices = argrelextrema(y_difference, np.less_equal)[0]
    Tmx = y_difference[maxima_indices] - (S * np.abs(np.diff(x_normalized).mean()))
    if not maxima_indices.size:
        return None
    maxima_threshold_index = 0
    all_knees = set()
    for i, _ in enumerate(x_difference):
        if i < maxima_indices[0]:
            continue
        j = i + 1
        if i == (len(x_difference) - 1):
            break
        if (maxima_indices == i).any():
            threshold = Tmx[maxima_threshold_index]
            threshold_index = i
            maxima_threshold_index += 1
        if (minima_indices == i).any():
            threshold = 0.0
        if y_difference[j] < threshold:
            knee = x[-(threshold_index + 1)]  # convex, increasing
            all_knees.add(knee)
    if all_knees == set():
        return None
    return knee


def reference_mask_quantile(losses) -> float:
    # DaC adaptive_mask.py, save_masks: the knee of the loss curve, 0.8 if none
    range = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # noqa: A001 (their name)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = reference_elbow(range, losses)
    if t is None:
        t = 0.8
    return t


def loss_curves(n: int, seed: int = 0) -> list[np.ndarray]:
    """Masked-loss curves over the 6 quantiles: random, increasing, convex, with ties."""
    rng = np.random.default_rng(seed)
    curves = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            curves.append(rng.random(6))
        elif kind == 1:
            curves.append(np.sort(rng.random(6)))
        elif kind == 2:
            curves.append(np.cumsum(rng.exponential(size=6)) ** rng.uniform(0.5, 3))
        else:
            curves.append(np.round(rng.random(6), 1))  # ties
    return curves


def test_knee_is_kneeds_on_seeded_loss_curves():
    curves = loss_curves(2000)
    ours = [dac.knee_quantile(c) for c in curves]
    theirs = [reference_mask_quantile(c) for c in curves]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert len(set(ours)) >= 4  # the curves reach several knees, and the no-knee 0.8


def test_knee_by_the_kneedle_definition():
    # flat, then a sharp rise after q = 0.6: the elbow of a convex increasing curve is
    # where it bends, 0.6 (Satopaa et al. 2011)
    assert dac.knee_quantile([1.0, 1.0, 1.0, 1.0, 3.0, 5.0]) == pytest.approx(0.6)
    # a straight line has no knee; nor has a constant curve: DaC's 0.8
    assert dac.knee_quantile([1, 2, 3, 4, 5, 6]) == dac.NO_KNEE
    assert dac.knee_quantile([2.0] * 6) == dac.NO_KNEE


# ---- XGrad-CAM: pytorch-grad-cam 1.5.2 ---------------------------------------------------


def reference_cv2_resize(img: np.ndarray, target_size) -> np.ndarray:
    # cv2.resize(img, (width, height)) with its default INTER_LINEAR on float32, written out
    # (opencv modules/imgproc/src/resize.cpp, resizeGeneric's coefficients): per axis,
    # fx = (dx + 0.5) * scale - 0.5, sx = floor(fx); sx < 0 -> 0 with fx = 0; sx >= n - 1
    # -> n - 1 with fx = 0; out = (1 - fx) src[sx] + fx src[sx + 1]
    def axis_weights(n_src, n_dst):
        fx = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
        sx = np.floor(fx).astype(int)
        fx = (fx - sx).astype(np.float32)
        fx[sx < 0], sx[sx < 0] = 0, 0
        fx[sx >= n_src - 1], sx[sx >= n_src - 1] = 0, n_src - 1
        return sx, np.minimum(sx + 1, n_src - 1), fx

    width, height = target_size
    y0, y1, fy = axis_weights(img.shape[0], height)
    x0, x1, fx = axis_weights(img.shape[1], width)
    rows = (1 - fy)[:, None] * img[y0] + fy[:, None] * img[y1]
    return (1 - fx)[None] * rows[:, x0] + fx[None] * rows[:, x1]


def reference_scale_cam_image(cam, target_size=None):
    # pytorch_grad_cam/utils/image.py, scale_cam_image (2-D maps)
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = reference_cv2_resize(np.float32(img), target_size)
        result.append(img)
    result = np.float32(result)
    return result


def reference_xgradcam(model, target_layer, input_tensor):
    # XGradCAM(model, [target_layer])(input_tensor), targets=None: BaseCAM.__init__ (eval),
    # ActivationsAndGradients (forward hooks, a tensor hook for the gradient), BaseCAM.forward
    # (ClassifierOutputTarget of the argmax), XGradCAM.get_cam_weights, BaseCAM.get_cam_image,
    # compute_cam_per_layer and aggregate_multi_layers
    model.eval()
    activations, gradients = [], []

    def save_activation(module, input, output):
        activations.append(output.cpu().detach())

    def save_gradient(module, input, output):
        def _store_grad(grad):
            gradients.insert(0, grad.cpu().detach())

        output.register_hook(_store_grad)

    handles = [
        target_layer.register_forward_hook(save_activation),
        target_layer.register_forward_hook(save_gradient),
    ]
    outputs = model(input_tensor)
    target_categories = np.argmax(outputs.cpu().data.numpy(), axis=-1)
    model.zero_grad()
    loss = sum([output[category] for category, output in zip(target_categories, outputs)])
    loss.backward(retain_graph=True)
    for handle in handles:
        handle.remove()
    activations, grads = activations[0].numpy(), gradients[0].numpy()
    sum_activations = np.sum(activations, axis=(2, 3))
    eps = 1e-7
    weights = grads * activations / (sum_activations[:, :, None, None] + eps)
    weights = weights.sum(axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0)
    target_size = (input_tensor.size(-1), input_tensor.size(-2))
    scaled = reference_scale_cam_image(cam, target_size)
    cam_per_target_layer = np.concatenate([scaled[:, None, :]], axis=1)
    cam_per_target_layer = np.maximum(cam_per_target_layer, 0)
    result = np.mean(cam_per_target_layer, axis=1)
    return reference_scale_cam_image(result)


def reference_quantile_masks(heat_map, probs):
    # DaC adaptive_mask.py, get_quantile_masks and mask_heatmap_using_threshold, as there
    masks = []
    quantiles = np.vsplit(np.quantile(heat_map, probs, axis=(1, 2)), len(probs))
    for quantile in quantiles:
        quantile = quantile.reshape(quantile.shape[1], 1, 1)
        masks.append(np.expand_dims(heat_map >= quantile, 1))
    return masks


def seeded_images(n: int = 6, size: int = 96, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    return images, torch.arange(n) % 2


def test_cam_is_pytorch_grad_cams_xgradcam_of_the_predicted_class():
    model = backbone_model()
    images, _ = seeded_images()
    copied = copy.deepcopy(model)
    theirs = reference_xgradcam(copied, copied.layer4[-1], images)
    ours, logits = dac.predicted_class_cam(model, images)
    assert ours.shape == images.shape[:1] + images.shape[2:]
    assert np.abs(ours.numpy() - theirs).max() < 1e-4
    assert ours.amin((1, 2)).max() < 1e-6 and ours.amax((1, 2)).min() > 1 - 1e-4  # [0, 1]
    assert logits.argmax(1).tolist() == model(images).argmax(1).tolist()


def test_adaptive_masks_are_dacs_masks(monkeypatch):
    # adaptive_mask.py main, one batch: the masked ERM losses at each quantile (removed pixels
    # set to 0), the knee per image (save_masks) and its mask
    model = backbone_model()
    images, y = seeded_images()
    copied = copy.deepcopy(model)
    heat_maps = reference_xgradcam(copied, copied.layer4[-1], images)
    criterion = nn.CrossEntropyLoss(reduction="none")
    range = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # noqa: A001 (their name)
    masks = reference_quantile_masks(heat_maps, range)
    with torch.no_grad():
        losses = np.concatenate(
            [
                criterion(model(images * torch.Tensor(mask)), y).unsqueeze(1).numpy()
                for mask in masks
            ],
            axis=1,
        )
    their_q = [reference_mask_quantile(list(curve)) for curve in losses]
    their_masks = np.stack(
        [heat_maps[i] >= np.quantile(heat_maps[i], their_q[i]) for i in np.arange(len(y))]
    )

    # their CAMs in ours (compared above), so that no pixel sits a rounding error from its
    # threshold in one and not the other
    with torch.no_grad():
        their_cams = (torch.from_numpy(heat_maps), model(images))
    monkeypatch.setattr(dac, "predicted_class_cam", lambda model, batch: their_cams)
    ours = dac.adaptive_masks(model, list(zip(images, y)), batch_size=len(y))
    assert ours.masked_loss == pytest.approx(losses, abs=1e-5)
    assert ours.quantile.tolist() == pytest.approx(their_q)
    assert len(set(their_q)) > 1  # the seeded inputs reach more than one knee
    mine = ours.unpack(np.arange(len(y)))[:, 0].astype(bool)
    # save_masks recomputes the quantile, in float32 for its fallback 0.8 (a Python float)
    assert (mine != their_masks).mean() < 1e-3
    kept = mine.mean((1, 2))
    assert kept == pytest.approx(1 - ours.quantile, abs=0.02)  # the top 1 - q of each CAM
    with torch.no_grad():
        erm_loss = criterion(model(images), y).numpy()
    assert ours.erm_loss == pytest.approx(erm_loss, abs=1e-5)


# ---- decompose and compose: DaC train.py, train_masked_low_loss --------------------------


def reference_batch_loss(inputs, labels, mask, tmp_loss, t, alpha, cnn_image_encoder):
    # train_masked_low_loss, one batch as there up to total_loss (labels one-hot, the mask
    # as their loader gives it, (B, H, 1, W)); tmp_loss is the frozen ERM's per-sample loss
    # (computed there in the batch under no_grad). Returns the partners it drew too.
    criterion = nn.CrossEntropyLoss()
    mask = mask.permute(0, 2, 1, 3).type(torch.IntTensor)
    batch_mean = torch.mean(inputs, dim=(0, 2, 3)).reshape([1, 3, 1, 1])
    selected_inputs = inputs[tmp_loss <= t]
    selected_labels = labels[tmp_loss <= t]
    selected_mask = mask[tmp_loss <= t]
    masked = selected_inputs * selected_mask + (1 - selected_mask) * batch_mean
    splits, label_splits, splits_masks = [], [], []
    for e in range(2):
        splits.append(selected_inputs[selected_labels[:, e] == 1].clone().detach())
        label_splits.append(selected_labels[selected_labels[:, e] == 1].clone().detach())
        splits_masks.append(torch.clone(selected_mask[selected_labels[:, e] == 1]))
    if splits[1].shape[0] > 0 and splits[0].shape[0] > 0:
        samples2 = np.random.choice(splits[1].shape[0], splits[0].shape[0])
        samples1 = np.random.choice(splits[0].shape[0], splits[1].shape[0])
        fusion1 = (
            splits[0] * splits_masks[0]
            + (1 - splits_masks[0]) * (1 - splits_masks[1][samples2].detach()) * splits[1][samples2]
            + (1 - splits_masks[0]) * splits_masks[1][samples2] * batch_mean
        )
        fusion2 = (
            splits[1] * splits_masks[1]
            + (1 - splits_masks[1]) * (1 - splits_masks[0][samples1].detach()) * splits[0][samples1]
            + (1 - splits_masks[1]) * splits_masks[0][samples1] * batch_mean
        )
        total_inputs = torch.cat([inputs, masked, fusion1, fusion2], dim=0)
        total_labels = torch.cat([labels, selected_labels, label_splits[0], label_splits[1]])
        drawn = (samples1, samples2)
    else:
        p = torch.randperm(selected_inputs.shape[0])
        permuted_inputs = torch.clone(selected_inputs).detach()[p]
        permuted_mask = torch.clone(selected_mask).detach()[p]
        fusion = (
            selected_inputs * selected_mask
            + (1 - selected_mask) * (1 - permuted_mask) * permuted_inputs
            + (1 - selected_mask) * permuted_mask * batch_mean
        )
        total_inputs = torch.cat((inputs, masked, fusion), dim=0)
        total_labels = torch.cat((labels, selected_labels, selected_labels), dim=0)
        drawn = p
    shape = inputs.shape[0]
    masked_shape = selected_inputs.shape[0]
    logits = cnn_image_encoder(total_inputs)
    total_loss = (
        criterion(logits[:shape], total_labels[:shape])
        + alpha
        * criterion(
            logits[shape : shape + masked_shape], total_labels[shape : shape + masked_shape]
        )
        + alpha * criterion(logits[shape + masked_shape :], total_labels[shape + masked_shape :])
    )
    return total_loss, drawn


def their_partners(y_sel: torch.Tensor, drawn) -> torch.Tensor:
    """Their draws as our partner index per selected image (positions in the selection)."""
    if isinstance(drawn, torch.Tensor):  # one class: the permutation
        return drawn
    samples1, samples2 = drawn
    zeros, ones = (y_sel == 0).nonzero()[:, 0], (y_sel == 1).nonzero()[:, 0]
    partners = torch.empty_like(y_sel)
    partners[zeros] = ones[torch.as_tensor(samples2)]
    partners[ones] = zeros[torch.as_tensor(samples1)]
    return partners


@pytest.mark.parametrize("both_classes", [True, False])
def test_batch_loss_is_train_masked_low_loss(monkeypatch, both_classes):
    torch.manual_seed(0)
    n, size = 12, 32
    images = torch.randn(n, 3, size, size)
    y = torch.tensor([0, 1] * (n // 2))
    masks = (torch.rand(n, 1, size, size) > 0.6).float()
    erm_loss = np.random.default_rng(0).random(n)
    if not both_classes:  # only class-0 images have a low loss
        erm_loss[y.numpy() == 1] += 10
    quantile, alpha = 0.5, 10.0
    model = build_classifier("resnet18", 2).train()  # BatchNorm on the batch, as theirs
    theirs_model = copy.deepcopy(model)

    selected = dac.low_loss_rows(erm_loss, quantile)
    t = np.quantile(erm_loss, quantile)  # utils.py compute_loss_quantiles
    np.random.seed(0)
    their_loss, drawn = reference_batch_loss(
        images,
        nn.functional.one_hot(y, 2).float(),
        masks.permute(0, 2, 1, 3),  # their loader's layout
        torch.as_tensor(erm_loss),
        t,
        alpha,
        theirs_model,
    )
    y_sel = y[torch.from_numpy(selected)]
    monkeypatch.setattr(dac, "draw_partners", lambda labels, _: their_partners(y_sel, drawn))
    loss, logits = dac.dac_loss(
        model, images, y, masks, torch.from_numpy(selected), alpha, torch.Generator()
    )
    assert selected.sum() == (erm_loss <= t).sum() > 0
    assert loss.item() == pytest.approx(their_loss.item(), rel=1e-5)
    assert logits.shape == (n, 2)
    # BatchNorm's running statistics moved alike: the same images went through together
    assert torch.allclose(model.bn1.running_mean, theirs_model.bn1.running_mean, atol=1e-5)


def test_compose_puts_the_causal_part_on_the_partners_background():
    images = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    mean = torch.full((1, 1, 1, 1), 9.0)
    out = dac.compose(images, masks, torch.tensor([1, 0]), mean)
    # image 0: its own pixel (1), the partner's causal pixel blanked (9), its background (2)
    assert out[0, 0].tolist() == [[1.0, 9.0], [2.0, 2.0]]
    assert out[1, 0].tolist() == [[9.0, 2.0], [1.0, 1.0]]


def test_partners_are_of_another_class_unless_there_is_none():
    generator = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    for _ in range(20):
        partners = dac.draw_partners(y, generator)
        assert (y[partners] != y).all()
    one_class = torch.zeros(5, dtype=torch.long)
    assert sorted(dac.draw_partners(one_class, generator).tolist()) == list(range(5))


# ---- end to end on a tiny table ------------------------------------------------------------


def tiny_dac_config(root):
    """The tiny profile at 64 px: ResNet-18's last block is then 2 x 2, where at 32 px its
    single cell gives a flat CAM (and a mask of the whole image)."""
    config = tiny_config(root)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, image_size=64),
        dac=dataclasses.replace(config.dac, batch_size=8, epochs=2),
    )


def test_the_stage_writes_what_evaluate_reads(waterbirds_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = indexed(tiny_dac_config(waterbirds_folder))
    erm = backbone_model()
    save_classifier(erm, "resnet18", 2, paths.ERM / "model.pt")
    dac_stage.run(config)

    assert trained_models(config)["dac"] == paths.DAC / "model.pt"
    model = load_classifier(paths.DAC / "model.pt")
    history = pd.read_csv(paths.DAC / "history.csv")
    assert history.columns.tolist() == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_wga",
        "val_mean_acc",
    ]
    assert history["epoch"].tolist() == [1, 2]
    # only the last layer trained; BatchNorm's running statistics moved (train mode)
    erm_state, state = erm.state_dict(), model.state_dict()
    assert torch.equal(state["layer1.0.conv1.weight"], erm_state["layer1.0.conv1.weight"])
    assert torch.equal(state["bn1.weight"], erm_state["bn1.weight"])
    assert not torch.equal(state["bn1.running_mean"], erm_state["bn1.running_mean"])
    assert not torch.allclose(state["fc.weight"], erm_state["fc.weight"])
    train = split_table(load_dataset(config.data)[1], "train")
    table = pd.read_csv(paths.DAC / "masks.csv")
    assert table["img_filename"].tolist() == train["img_filename"].tolist()
    assert set(table["quantile"]) <= set(dac.QUANTILES)
    assert "group" not in table.columns and "place" not in table.columns
    saved = np.load(paths.DAC / "masks.npz")
    size = config.data.image_size
    assert saved["size"].tolist() == [size, size]
    bits = np.unpackbits(saved["packed"], axis=1, count=size * size)
    assert bits.mean(1) == pytest.approx(1 - table["quantile"].to_numpy(), abs=0.05)


def test_training_reads_no_train_group(waterbirds_folder):
    config = tiny_dac_config(waterbirds_folder)
    root, table, groups = load_dataset(config.data)
    erm = backbone_model()
    train = split_table(table, "train")
    from ddb.data.dataset import ImageTable
    from ddb.models.classifier import eval_transform

    masks = dac.adaptive_masks(erm, ImageTable(root, train, eval_transform(64)), 8)
    result = dac.train(config, root, table, groups, erm, masks)
    is_train = table["split"] == 0
    scrambled = table.assign(
        group=np.where(is_train, 0, table["group"]), place=np.where(is_train, 0, table["place"])
    )
    again = dac.train(config, root, scrambled, groups, erm, masks)
    assert torch.equal(again.model.fc.weight, result.model.fc.weight)
    assert 1 <= result.best_epoch <= 2


def test_registered_as_a_method_without_train_groups():
    assert LABELS["dac"] == ("DaC", "no", "yes (model selection)")


# ---- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("quantile", 0.0),
        ("quantile", 1.5),
        ("alpha", -1.0),
        ("optimizer", "adamw"),
        ("lr", 0.0),
        ("weight_decay", -0.1),
        ("batch_size", 1),
        ("epochs", 0),
        ("step_size", -1),
        ("gamma", 0.0),
    ],
)
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'dac.{key}'"):
        default_section("dac", **{key: value})


def test_params_yaml_holds_the_defaults():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # every dac key reaches the config, as its own type (no int where a float is meant)
    dac = dataclasses.asdict(load_config(REPO / "params.yaml").dac)
    assert dac == params["dac"]
    assert {k: type(v) for k, v in dac.items()} == {k: type(v) for k, v in params["dac"].items()}
