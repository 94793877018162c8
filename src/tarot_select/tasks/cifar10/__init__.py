"""CIFAR-10 with ResNet-9: the paper-scale task of the LDS benchmark (TAROT Fig. 4, as in TRAK).

Images
------
A local copy of CIFAR-10 in torchvision's layout; nothing is ever downloaded. Key
``root`` (required) is the folder that *contains* ``cifar-10-batches-py/``, i.e. what
``torchvision.datasets.CIFAR10(root, download=False)`` takes. That folder holds the
python pickles ``data_batch_1`` … ``data_batch_5`` (training, 10,000 images each),
``test_batch`` (10,000) and ``batches.meta``; every batch is a dict with ``data``, a
``(n, 3072)`` uint8 array (the 1,024 red, then green, then blue pixels of each 32×32
image, rows first), and ``labels``, ``n`` integers in 0..9 (keys are ``bytes`` or
``str`` depending on how the pickle is read; both are accepted).

If :mod:`torchvision` can be imported, the batches are read by
``torchvision.datasets.CIFAR10(root, train=…, download=False)``, which also checks the
files' md5 sums (so a modified copy is refused); otherwise the pickles are read directly
with :mod:`pickle` (the same arrays, without the md5 check). Either way, only the files
under ``root`` are read. Pickles can run code when loaded: point ``root`` only at a copy
of CIFAR-10 you trust.

Splits
------
Fixed slices in file order; the task seed does not change them (TRAK's benchmark uses
fixed training and test sets):

* ``candidates`` = the first ``n_train`` training images (default all 50,000): the
  training set of the LDS models (subsets are drawn from it);
* ``targets`` = the first ``n_targets`` test images (default: all 10,000, or all but the
  ``n_evaluation`` evaluation images): the examples whose margins LDS predicts;
* ``evaluation`` = the same images as ``targets`` (same order, same dataset object) when
  ``n_evaluation = 0`` (default: in an influence benchmark the targets *are* the
  held-out test images), otherwise the ``n_evaluation`` test images that follow the
  targets, disjoint from them.

:meth:`~.task.Cifar10Task.prepare` copies no image: it writes a manifest (``data.json``: the
absolute ``root``, the file each split comes from, counts, per-class counts) and
``indices.npz`` (``{split}_index``, the image indices within the training or test set,
and ``{split}_y``, their labels, so that :meth:`~.task.Cifar10Task.load` can tell when ``root``
no longer holds the same data). :meth:`~.task.Cifar10Task.load` re-reads the batches (about
180 MB, cached per process) and returns :class:`~torch.utils.data.TensorDataset` splits
of ``(uint8 image (3, 32, 32), int64 label)``: raw pixels, 150 MB for the 50,000
candidates instead of 600 MB as float32. The model scales and normalises them itself.

Model
-----
:class:`~.task.ResNet9`, the first operation of which is ``x / 255`` followed by the standard
CIFAR-10 normalisation of TRAK's code (mean ``(0.4914, 0.4822, 0.4465)``, std
``(0.2023, 0.1994, 0.2010)``), so it takes raw pixels (uint8 or float, 0..255). Two
variants (key ``arch``), both conv(no bias)-BatchNorm-ReLU blocks with
``width`` = 64 channels in the first block:

``trak``    (default) the ResNet-9 of TRAK's CIFAR-10 code (``construct_rn9`` in
            ``MadryLab/trak`` ``examples/cifar_quickstart.ipynb``): 64, 128 (5×5, stride 2),
            residual 2×128, 256, max-pool, residual 2×256, 128 (no padding), global max-pool,
            linear 128 → 10 without bias, output × 0.2; 2.3 M parameters. The one to
            use when comparing with TRAK's CIFAR-10 numbers.
``myrtle``  the ResNet-9 of the fast CIFAR-10 trainings (Page's DAWNBench entry,
            ``cifar10-fast``): 64, 128, max-pool, residual 2×128, 256, max-pool, 512,
            max-pool, residual 2×512, global max-pool, linear 512 → 10 without bias,
            output × 0.125; 6.6 M parameters.

Batch norm is the one part that needs care for attribution: per-sample gradients
(:func:`tarot_select.gradients.per_sample_gradients`, ``vmap`` over ``grad`` of a
``functional_call``) must be taken in **eval** mode, where batch norm uses its running
statistics and every sample is independent of the others;
:class:`~tarot_select.featurize.GradientFeaturizer` (and so the LDS features and the
``dump_gradients`` stage) switches the model to eval mode. :meth:`~.task.Cifar10Task.loss_fn` and
:meth:`~tarot_select.tasks.base.ClassifierOutputsMixin.output_fn` are plain functions of
``forward(x)`` and run under :func:`torch.func.vmap` / :func:`torch.func.grad`. ReLUs are
not in-place, and the global pool is an ``amax`` over the spatial dimensions. In float32,
batched (``vmap``) and single-sample convolutions round differently, so where a ReLU
pre-activation lies within rounding of zero the two gradients can differ at that kink
(one of 40 images in the tests); in float64 they agree to 1e-5.

Training
--------
TRAK's recipe: mini-batch SGD with momentum 0.9 and weight decay 5e-4 on every
parameter, a triangular ("one-cycle") learning rate per step, rising linearly from 0 to
``lr`` at epoch ``lr_peak_epoch`` and falling linearly to 0 at the end, 24 epochs, peak
lr 0.4, batch size 512, no label smoothing. No augmentation by default, so that a
training run is a deterministic function of its data and seed (what LDS assumes);
``augment: true`` adds random crops (zero padding 4) and horizontal flips to every
training batch (proxy and downstream; never to gradients, outputs or evaluation).
Initialisation, shuffling, sampling and augmentation are all seeded.

The proxy (:meth:`~.task.Cifar10Task.train_proxy`, trained on candidates ∪ targets, as every
task's proxy) uses Adam by default, because its checkpoints must carry Adam moments for
LESS-style preconditioning (``dump_gradients`` with ``adam=True``);
``proxy.optimizer: sgd`` gives it TRAK's SGD recipe instead (then set ``proxy.lr``, e.g.
0.4), but such checkpoints cannot be Adam-preconditioned.

Settings (:class:`~.settings.Cifar10Settings`)
----------------------------------------------
``root``            folder containing ``cifar-10-batches-py/`` (required)
``n_train``         candidates: the first ``n_train`` training images (None: all 50,000)
``n_targets``       targets: the first ``n_targets`` test images (None: all not used for evaluation)
``n_evaluation``    separate evaluation images after the targets (0: evaluation = targets)
``arch``            ``"trak"`` or ``"myrtle"`` (``"trak"``)
``width``           channels of the first block; the others scale with it (64)
``augment``         random crop + flip in training (false)
``proxy``           ``{optimizer: adam, epochs: 24, lr: 0.001, batch_size: 512, weight_decay: 0.0,
                    momentum: 0.9, lr_peak_epoch: 5, checkpoints: 3}``
``downstream``      ``{epochs: 24, lr: 0.4, batch_size: 512, weight_decay: 5e-4, momentum: 0.9,
                    lr_peak_epoch: 5, eval_every: 0}``

``momentum`` is SGD's; ``lr_peak_epoch`` may be fractional and must be below ``epochs``
(0: start at the peak and decay linearly). Training and evaluation run on the task's
device (the common key ``device``, else the workflow's). Every epoch logs its loss,
learning rate and time; ``downstream.eval_every: k`` adds the accuracy on the evaluation
split every ``k`` epochs (0, the default: never, so that the many small trainings of the
LDS benchmark pay nothing for it; evaluating in eval mode leaves the batch-norm
statistics and the training unchanged).
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import Cifar10Settings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="cifar10_resnet9",
    settings=Cifar10Settings,
    task="tarot_select.tasks.cifar10.task:Cifar10Task",
    model_outputs=True,
    summary="a local CIFAR-10 with ResNet-9: the paper-scale LDS benchmark task (TAROT Fig. 4)",
)
