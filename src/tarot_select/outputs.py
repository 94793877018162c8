r"""Model-output functions: the scalar outputs whose gradients attribution methods use.

TRAK (Park et al., 2023) attributes a model *output* rather than its loss; for
classification the output is the correct-class margin. Tasks use these functions for
their :meth:`~tarot_select.tasks.base.ModelOutputs.output_fn`, and the LDS benchmark
(:mod:`tarot_select.lds`) predicts them.
"""

from __future__ import annotations

import torch

from .errors import TarotInputError

__all__ = ["margin"]


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Correct-class margin, TRAK's model output for classification.

    .. math:: f(z) = \ell_y - \log\sum_{c\ne y} e^{\ell_c} = \log\frac{p_y}{1-p_y},

    with :math:`\ell` the logits and :math:`p = \operatorname{softmax}(\ell)`. Since the
    cross-entropy is :math:`L = -\log p_y = \log(1 + e^{-f})`,
    :math:`\partial L/\partial f = -(1-p_y)`: the factor TRAK puts in :math:`Q`.

    Differentiable and usable under :func:`torch.func.vmap` / :func:`torch.func.grad`.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C)
        ``C >= 2`` classes.
    labels : torch.Tensor, shape (B,), integer
        Correct classes in ``0..C-1``.

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise TarotInputError(f"logits must have shape (B, C) with C >= 2, got {tuple(logits.shape)}")
    labels = labels.reshape(-1).long()
    if labels.shape[0] != logits.shape[0]:
        raise TarotInputError(f"{labels.shape[0]} labels for {logits.shape[0]} rows of logits")
    classes = torch.arange(logits.shape[-1], device=logits.device)
    is_label = classes.unsqueeze(0) == labels.unsqueeze(1)
    correct = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = torch.logsumexp(logits.masked_fill(is_label, float("-inf")), dim=1)
    return correct - others
