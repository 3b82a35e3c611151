"""Fine-tuning the bundled EfficientNet-Lite0 on real Fashion-MNIST tasks; evaluation and softmax outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edge_smsp.core.errors import EdgeSmspError, ModelError
from edge_smsp.data import tasks as data
from edge_smsp.data.fashion_mnist import FASHION_MNIST_DIR
from edge_smsp.models import zoo
from edge_smsp.training import finetune as train

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
SIZE = 32


def _lite0(num_classes: int) -> torch.nn.Module:
    return zoo.load_backbone("efficientnet_lite0", pretrained=True, num_classes=num_classes, image_size=SIZE)


def _task(classes, train_per_class=40, val_per_class=30, seed=0) -> data.Task:
    spec = zoo.backbone_spec(_lite0(2))
    return data.load_task(
        "fashion-mnist",
        classes,
        image_size=SIZE,
        mean=spec.mean,
        std=spec.std,
        seed=seed,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
    )


@pytest.fixture(scope="module")
def task() -> data.Task:
    return _task([1, 7, 8])  # Trouser, Sneaker, Bag


def test_finetune_learns_a_real_task(task):
    model = _lite0(3)
    before = train.evaluate(model, task.val)
    result = train.finetune(model, task, 30, batch_size=16, seed=0)
    after = train.evaluate(model, task.val)
    assert result.iters == 30 and len(result.losses) == 30
    assert result.final_loss == result.losses[-1]
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert after >= 0.8 and after > before + 0.3, (before, after)
    assert result.seconds > 0
    assert not model.training


def test_same_seed_same_weights_other_seed_other_weights(task):
    runs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        model = _lite0(3)
        result = train.finetune(model, task, 3, batch_size=8, seed=seed, optimizer="adamw")
        runs[label] = (zoo.weights_hash(model), result.losses)
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]
    assert all(np.isfinite(runs["a"][1]))


def test_exact_iteration_count_cycles_through_shuffled_epochs():
    small = _task([0, 9], train_per_class=5, val_per_class=2)  # 10 training images
    model = _lite0(2)
    seen: list[bytes] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.extend(bytes(x.numpy()) for x in args[0]))
    result = train.finetune(model, small, 5, batch_size=4, seed=1)
    hook.remove()
    assert result.iters == 5 and len(result.losses) == 5
    assert len(seen) == 20  # 5 batches of 4
    # 20 samples = two full epochs: every training image exactly twice.
    counts = {}
    for image in seen:
        counts[image] = counts.get(image, 0) + 1
    assert len(counts) == 10 and set(counts.values()) == {2}


def test_evaluate_and_predict_proba_agree(task):
    model = _lite0(3)
    model.train()
    probabilities = train.predict_proba(model, task.val, batch_size=32)
    assert model.training  # mode restored
    assert probabilities.dtype == np.float64 and probabilities.shape == (len(task.val), 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    labels = task.val.labels.numpy()
    assert train.evaluate(model, task.val, batch_size=7) == pytest.approx(
        float((probabilities.argmax(axis=1) == labels).mean())
    )
    images, _ = task.val.batch(range(10))
    from_tensor = train.predict_proba(model, images, batch_size=4)
    assert np.allclose(from_tensor, probabilities[:10], atol=1e-6)
    assert train.predict_proba(model, task.val, max_samples=5).shape == (5, 3)


def test_progress_bar_only_when_asked(task, capsys):
    train.finetune(_lite0(3), task, 1, batch_size=4)
    assert capsys.readouterr().err == ""
    train.finetune(_lite0(3), task, 1, batch_size=4, progress=True)
    assert "fine-tune" in capsys.readouterr().err


def test_bad_training_input(task):
    with pytest.raises(ModelError, match="1000 outputs but task fashion-mnist:1-7-8 has 3 classes"):
        train.finetune(zoo.load_backbone("efficientnet_lite0", pretrained=True), task, 1, batch_size=2)
    with pytest.raises(EdgeSmspError, match="unknown optimizer 'adam'"):
        train.finetune(_lite0(3), task, 1, optimizer="adam")
    with pytest.raises(EdgeSmspError, match="non-negative"):
        train.finetune(_lite0(3), task, -1)
    with pytest.raises(EdgeSmspError, match="learning rate"):
        train.finetune(_lite0(3), task, 1, lr=0.0)
    assert train.finetune(_lite0(3), task, 0).iters == 0


def test_sgd_learning_rate_scales_with_the_batch_that_trains(task):
    assert train.finetune(_lite0(3), task, 1, batch_size=64).lr == pytest.approx(0.02)
    assert train.finetune(_lite0(3), task, 1, batch_size=16).lr == 0.01  # not below batch 32's
    # the task has 120 training images: a batch of 128 trains on 120 and its rate follows
    assert train.finetune(_lite0(3), task, 0, batch_size=128).lr == pytest.approx(0.0375)
    assert train.finetune(_lite0(3), task, 1, batch_size=64, lr=0.003).lr == 0.003
    assert train.finetune(_lite0(3), task, 1, batch_size=64, optimizer="adamw").lr == 1e-3
    # measured up to batch 128 only: larger batches keep its rate
    assert train.default_lr("SGD", 512) == pytest.approx(0.04)
    with pytest.raises(EdgeSmspError, match="unknown optimizer 'adam'"):
        train.default_lr("adam", 32)


def test_micro_batches_give_the_full_batch_update(task):
    """With BatchNorm on its running statistics (the one part that sees a chunk, not the batch), a step made of
    3 accumulated chunks equals the step on the whole batch."""
    start = _lite0(3)
    whole, chunked = copy.deepcopy(start), copy.deepcopy(start)
    whole_result = train.finetune(whole, task, 1, batch_size=24, seed=5, train_mode_bn=False)
    chunked_result = train.finetune(
        chunked, task, 1, batch_size=24, seed=5, train_mode_bn=False, micro_batch=8
    )
    assert chunked_result.losses[0] == pytest.approx(whole_result.losses[0], rel=1e-5)
    assert (whole_result.micro_batch, chunked_result.micro_batch, chunked_result.batch_size) == (None, 8, 24)
    whole_step = torch.cat([(whole.state_dict()[k] - v).flatten() for k, v in start.state_dict().items()])
    chunked_step = torch.cat([(chunked.state_dict()[k] - v).flatten() for k, v in start.state_dict().items()])
    assert whole_step.norm() > 0
    assert (chunked_step - whole_step).norm() < 1e-3 * whole_step.norm()


def test_micro_batches_train_with_batchnorm_in_train_mode(task):
    # a chunk of one image cannot be normalised: 5 images in chunks of "1" become 2 chunks (3 + 2)
    result = train.finetune(_lite0(3), task, 3, batch_size=5, micro_batch=1)
    assert result.iters == 3 and all(np.isfinite(result.losses)) and result.micro_batch == 3
    with pytest.raises(EdgeSmspError, match="micro-batch must be a positive integer"):
        train.finetune(_lite0(3), task, 1, micro_batch=0)


def test_a_loss_hook_replaces_the_cross_entropy(task):
    """A model trained through `loss_fn` on shifted labels learns the shift, not the task's labels."""

    def shifted(logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[0] == labels.shape[0]
        return torch.nn.functional.cross_entropy(logits, (labels + 1) % 3)

    model = _lite0(3)
    train.finetune(model, task, 30, batch_size=16, seed=1, loss_fn=shifted)
    says = train.predict_proba(model, task.val).argmax(axis=1)
    labels = task.val.labels.numpy()
    # Chance is 1/3; trained on the labels, the same model answers (y + 1) mod 3 on ~5 % of the images.
    assert (says == (labels + 1) % 3).mean() >= 0.6
    assert (says == labels).mean() <= 0.2


def test_a_groups_hook_sets_the_optimizer_groups(task):
    """Groups that freeze everything but the classifier (rate 0, no decay elsewhere) leave the body untouched."""
    model = _lite0(3)
    head = set(map(id, model.get_classifier().parameters()))

    def head_only(module: torch.nn.Module, weight_decay: float, lr: float) -> list[dict[str, object]]:
        body = [p for p in module.parameters() if id(p) not in head]
        return [
            {"params": body, "lr": 0.0, "weight_decay": 0.0},
            {"params": list(module.get_classifier().parameters()), "lr": lr, "weight_decay": weight_decay},
        ]

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train.finetune(model, task, 3, batch_size=8, parameter_groups=head_only)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in model.named_parameters() if id(p) in head}


def test_channels_last_training_matches_contiguous_training(task, monkeypatch):
    """EfficientNet-Lite0 trains in channels_last (2x faster on CPU); one step must equal the NCHW step.

    Measured: the first update differs by 0.15 % (relative norm over all parameters) between the layouts, and
    by 5e-4 % between 1 and 2 threads in NCHW: float32 BatchNorm over 16 values per channel at the 1x1 late
    layers amplifies rounding. Only one step is compared: after it *any* float-level change (layout, threads,
    a 1e-6 nudge of the head) sends training on a visibly different path, as it does in NCHW alone.
    """
    start = _lite0(3)
    assert train.memory_format_for(start) == torch.channels_last
    fast, plain = copy.deepcopy(start), copy.deepcopy(start)
    fast_result = train.finetune(fast, task, 1, batch_size=16, seed=2)
    fast_probabilities = train.predict_proba(start, task.val)
    monkeypatch.setattr(train, "memory_format_for", lambda _model: torch.contiguous_format)
    plain_result = train.finetune(plain, task, 1, batch_size=16, seed=2)
    assert np.allclose(fast_probabilities, train.predict_proba(start, task.val), atol=1e-5)
    assert np.allclose(fast_result.losses, plain_result.losses, rtol=1e-4)
    fast_steps, plain_steps = [], []
    for name, before in start.state_dict().items():
        assert fast.state_dict()[name].is_contiguous(), name  # saved, pruned and exported as before
        if before.is_floating_point():
            fast_steps.append((fast.state_dict()[name] - before).flatten())
            plain_steps.append((plain.state_dict()[name] - before).flatten())
    fast_step, plain_step = torch.cat(fast_steps), torch.cat(plain_steps)
    assert plain_step.norm() > 0
    assert (fast_step - plain_step).norm() < 0.02 * plain_step.norm()


def test_vits_and_plain_cnns_keep_the_default_layout():
    from tests.pruning_helpers import backbone

    assert train.memory_format_for(backbone("deit_small_patch16_224")) == torch.contiguous_format
    assert train.memory_format_for(backbone("resnet18")) == torch.contiguous_format
