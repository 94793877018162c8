"""Domain-shifted handwritten digits: a small, download-free task for the whole pipeline.

The 1,797 8×8 images of :func:`sklearn.datasets.load_digits` (values 0..16, scaled to
``[0, 1]``) are split once into a *held-out* part (targets and evaluation) and a
*candidate* part. Every candidate source draws ``per_source`` images from the candidate
part and transforms them; the target domain is an equal-share mixture of some of those
styles, applied to held-out images. No base image is shared between the candidates and
the targets ∪ evaluation.

Sources (``sources``)
---------------------
``clean``        the images as they are
``rotated``      rotation by a random angle in ±[20°, 40°] (``scipy.ndimage.rotate``, bilinear)
``inverted``     ``1 - x``
``noisy``        additive Gaussian noise, σ = 0.3, clipped to ``[0, 1]``
``blurred``      ``scipy.ndimage.gaussian_filter`` with σ = 0.8
``shifted``      integer shift by 1 or 2 pixels (either sign) along both axes, zero fill
``label_noise``  clean images whose labels are replaced by a uniformly random *wrong* label

Every random choice comes from a NumPy generator seeded with ``[seed, *stream]``, where the
stream names the purpose (and the source by its position in :data:`ALL_SOURCES`), so one
source's images do not change when other sources are added to or removed from the config.

Settings (:class:`~.settings.DigitsSettings`, all keys optional)
----------------------------------------------------------------
``sources``        candidate sources, default all of :data:`ALL_SOURCES`
``per_source``     candidates per source (200)
``target_styles``  styles mixed in equal shares into targets and evaluation (``["rotated", "noisy"]``)
``n_targets``      target samples (100)
``n_evaluation``   evaluation samples (400)
``proxy``          ``{epochs: 8, lr: 0.003, batch_size: 64, checkpoints: 3, width: 16}``
``downstream``     ``{epochs: 30, lr: 0.003, batch_size: 32, width: 16}``

Both models are the same small CNN (:class:`~.task.DigitsCNN`, no batch norm), trained with
Adam and a per-epoch cosine learning-rate decay, so successive proxy checkpoints carry
different learning rates and Adam moments (what TracIn- and LESS-style weighting need).
Training and evaluation run on the task's device (``device``, else the workflow's); every
epoch logs its loss, learning rate and time, and downstream training the accuracy on the
evaluation split (eval mode, no gradients, no random numbers: the training is unchanged).
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import DigitsSettings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="digits",
    settings=DigitsSettings,
    task="tarot_select.tasks.digits.task:DigitsTask",
    model_outputs=True,
    summary="domain-shifted scikit-learn digits, small CNN (the quick default task)",
)
