"""The task protocol: what a task must provide for the pipeline to select data for it.

A task is one module under :mod:`tarot_select.tasks` plus one config block; the
Snakemake rules only call the methods below, so adding a task needs no new rule.

Stages and the methods they call
--------------------------------
``prepare_data``     :meth:`Task.check` (also at config load), :meth:`Task.prepare`
``train_proxy``      :meth:`Task.train_proxy` → checkpoints (weights, learning rate, Adam state)
``dump_gradients``   :meth:`Task.proxy_model`, :meth:`Task.loss_fn`, :meth:`Task.gradient_batches`
``train_downstream`` :meth:`Task.train_downstream` on a weighted index list of one split
``evaluate``         :meth:`Task.evaluate` → ``{metric: value}``; :attr:`Task.metrics` says what they are

Every task method runs under the job's :class:`RunContext` (:attr:`Task.context`: device,
dtype / AMP, threads, work dir, progress bars), and reads its settings from
:attr:`Task.options` (the task's :class:`~tarot_select.tasks.settings.TaskSettings`
dataclass; :attr:`Task.settings` is the same as a plain dict).

Optional hooks with defaults: :meth:`Task.load_checkpoint` (load a proxy checkpoint into
the proxy model, e.g. LoRA adapters only), :meth:`Task.training_examples` (map a selected
candidate to the downstream examples it stands for), several target sets served by
one candidate pool (:meth:`~tarot_select.tasks.settings.TaskSettings.target_names` and the
``target`` argument of :meth:`Task.load`), and, for Influence Distillation's cheap JVP
embeddings (:class:`~tarot_select.embed.JVPEmbedder`, method ``infdist``),
:meth:`Task.embedding_blocks` (the module names of the proxy's blocks in forward order; the
default refuses) and :meth:`Task.embedding_reduce` (a linear per-sample reduction of a block
output to ``(B, k)``; default: flatten).

Influence benchmarks (LDS, :mod:`tarot_select.lds`) need four more methods, the
:class:`ModelOutputs` protocol; :class:`ClassifierOutputsMixin` implements the last three
for classifiers whose items are ``(x, y)``:

``downstream_model`` a fresh downstream model (to load a :meth:`Task.train_downstream` state into)
``output_fn``        the scalar model output whose gradient TRAK / WFD features use
``outputs``          that output of a trained downstream model on every example of a split
``train_weights``    TRAK's per-example out-to-loss factor :math:`1 - p_y`

The proxy model (for gradients) and the downstream model (trained on the selection) may
differ: that is how transfer is shown (e.g. AutoBots proxy, Wayformer downstream).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import special
from torch import nn

from ..errors import TarotInputError
from ..io import load_npz
from ..outputs import margin
from .settings import TaskSettings

__all__ = [
    "SPLITS",
    "ClassifierOutputsMixin",
    "Metric",
    "ModelOutputs",
    "ProxyCheckpoint",
    "RunContext",
    "Task",
    "TaskData",
    "load_prepared_arrays",
    "load_torch_file",
    "require_model_outputs",
]

#: Batch size of the forward passes in :class:`ClassifierOutputsMixin`.
_OUTPUT_BATCH = 512

#: Splits every task provides. ``candidates`` is the pool, ``targets`` the target sample
#: used for selection, ``evaluation`` the held-out set of the target domain.
SPLITS: tuple[str, ...] = ("candidates", "targets", "evaluation")


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, as torch datasets, and where candidates come from.

    Attributes
    ----------
    candidates, targets, evaluation : torch.utils.data.Dataset
        Map-style datasets; item ``i`` of ``candidates`` is candidate index ``i``.
    sources : np.ndarray, shape (n_candidates,), str
        Name of the source (sub-dataset) of every candidate, for per-source reports.
    target_groups : np.ndarray, shape (n_targets,), or None
        Subtask label per target (used by LESS), if the task has subtasks.
    """

    candidates: torch.utils.data.Dataset
    targets: torch.utils.data.Dataset
    evaluation: torch.utils.data.Dataset
    sources: np.ndarray
    target_groups: np.ndarray | None = None

    def split(self, name: str) -> torch.utils.data.Dataset:
        """Dataset of split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; one of {SPLITS}")
        return getattr(self, name)


@dataclass(frozen=True)
class Metric:
    """What one metric of :meth:`Task.evaluate` is, for tables and figures.

    Attributes
    ----------
    name : str
        Key in the dict :meth:`Task.evaluate` returns.
    higher_is_better : bool
        Direction (marks the best entry in tables): True for accuracy or mIoU, False for
        Brier-minFDE or a loss.
    unit : str
        Unit of the *displayed* value (``"%"``, ``"m"``, ``""``).
    scale : float
        Displayed value = stored value × ``scale`` (100 for a fraction shown in %).
    label : str
        Human name (axis labels, table captions); default: ``name``.
    """

    name: str
    higher_is_better: bool = True
    unit: str = ""
    scale: float = 1.0
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in run records (``metric_spec``)."""
        return {
            "name": self.name,
            "label": self.label or self.name,
            "unit": self.unit,
            "scale": float(self.scale),
            "higher_is_better": bool(self.higher_is_better),
        }


@dataclass(frozen=True)
class RunContext:
    """How a job runs, handed to every task (:attr:`Task.context`).

    Attributes
    ----------
    device : str
        Torch device of training, evaluation and gradients (``cpu``, ``cuda``, ``cuda:1``);
        the workflow resolves ``auto``.
    dtype : str
        Parameter / compute dtype of the models (``float32``; ``bfloat16`` for large models).
    amp : bool
        Mixed precision (autocast) where a task supports it.
    threads : int
        CPU threads of the job (torch's and BLAS pools are capped to it by the stage).
    work_dir : Path or None
        Scratch directory of the job (None: the system's temporary directory).
    progress : bool
        Show progress bars (interactive runs); logs get one line per epoch either way.
    """

    device: str = "cpu"
    dtype: str = "float32"
    amp: bool = False
    threads: int = 1
    work_dir: Path | None = None
    progress: bool = False

    @property
    def torch_device(self) -> torch.device:
        """:attr:`device` as a :class:`torch.device`."""
        return torch.device(self.device)


@dataclass(frozen=True)
class ProxyCheckpoint:
    """One saved proxy checkpoint.

    ``path`` holds a dict ``{"model": state_dict, "optimizer": adam_state_dict}``;
    ``lr`` is the learning rate in force at that point (the TracIn / LESS weight).
    """

    path: str
    lr: float
    epoch: int
    extra: Mapping[str, Any] = field(default_factory=dict)


def _first_sentence(exc: BaseException, limit: int = 120) -> str:
    """``Type: first sentence of the message`` on one line, at most ``limit`` characters of message."""
    text = " ".join(str(exc).split())
    text = text.split(". ")[0][:limit] if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_torch_file(
    path: str | Path, what: str = "checkpoint", fix: str = "delete it and rerun the step that made it"
) -> Any:
    """``torch.load`` of a file a job wrote (weights only, on CPU), with one-line errors.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is, for the message (``proxy checkpoint``, ``downstream model``).
    fix : str
        How to get a good file back, for the message.

    Raises
    ------
    TarotInputError
        If the file is missing, empty, truncated or otherwise unreadable (naming it and
        saying how to rebuild it), or holds objects other than tensors and containers.
    """
    p = Path(path)
    if not p.is_file():
        raise TarotInputError(f"{p}: {what} not found; {fix}")
    if p.stat().st_size == 0:
        raise TarotInputError(f"{p}: {what} is empty (an interrupted write?); {fix}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, unpickling and EOF errors all mean a damaged file
        raise TarotInputError(f"{p}: {what} is truncated or damaged ({_first_sentence(exc)}); {fix}") from None


def load_prepared_arrays(path: str | Path, keys: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` that a task's :meth:`Task.prepare` wrote into its data folder
    (:func:`~tarot_select.io.save_npz`), checked against its sidecar.

    Raises
    ------
    TarotInputError
        If it is missing, truncated or changed since it was written, or lacks one of ``keys``;
        the message says to delete the whole folder (a workflow's data folder is one output:
        deleting the file alone would not make the workflow prepare it again).
    """
    p = Path(path)
    try:
        return load_npz(p, keys=tuple(keys))
    except TarotInputError as exc:
        reason = str(exc).split("; ")[0]
        raise TarotInputError(
            f"{reason}; delete the folder {p.parent} and prepare again (snakemake reruns prepare_data)"
        ) from None


class Task(ABC):
    """Base class of every task. Subclasses set :attr:`name`, :attr:`SETTINGS` and :attr:`metrics`.

    Parameters
    ----------
    config : TaskSettings or mapping
        The task's settings, or its config block (read by :attr:`SETTINGS`).
    seed : int
        Global seed; every random choice of the task derives from it.
    context : RunContext, optional
        How the job runs (device, threads, ...); default: CPU, one thread.
    check : bool, default True
        Run the settings' cross-field checks (stage jobs that receive only their part of
        the block pass False; the whole block was checked when the config was loaded).
    """

    #: Registry name (the task kind), used in config.
    name: str = ""
    #: The task's settings dataclass (single source of its keys, defaults and checks).
    SETTINGS: type[TaskSettings] = TaskSettings
    #: What :meth:`evaluate` returns; the first is the primary metric of tables and figures.
    metrics: tuple[Metric, ...] = ()
    #: The target set this instance serves in a workflow job (one of the settings'
    #: ``target_names()``), or None for a task with one target set.
    target: str | None = None

    def __init__(
        self,
        config: TaskSettings | Mapping[str, Any] | None = None,
        seed: int = 0,
        context: RunContext | None = None,
        *,
        check: bool = True,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise TarotInputError(f"{self.name}: seed must be a non-negative integer, got {seed!r}")
        self.options = self.SETTINGS.from_config(config, self.name, check=check)
        self.settings: dict[str, Any] = self.options.to_dict()
        self.config = self.settings
        self.seed = int(seed)
        self.context = context or RunContext()

    @property
    def primary_metric(self) -> Metric:
        """The metric of tables and figures (the first of :attr:`metrics`)."""
        if not self.metrics:
            raise TarotInputError(f"task {self.name!r} declares no metrics")
        return self.metrics[0]

    @property
    def metric(self) -> str:
        """Name of the primary metric (a key of :meth:`evaluate`'s result)."""
        return self.primary_metric.name

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return self.primary_metric.higher_is_better

    # ------------------------------------------------------------------ data
    def check(self) -> None:
        """Raise :class:`~tarot_select.errors.TarotInputError` if the task cannot run.

        The settings dataclass already checked every key when the task was built (dataset
        paths exist, sizes are consistent); override for checks that need the task's own
        code. Must be cheap."""

    @abstractmethod
    def prepare(self, out_dir: Path) -> None:
        """Materialise the splits under ``out_dir`` (arrays, or manifests of files for
        large datasets). Deterministic given the config and seed."""

    @abstractmethod
    def load(self, data_dir: Path, target: str | None = None) -> TaskData:
        """Load the splits that :meth:`prepare` wrote.

        ``target`` names one of the settings' :meth:`~TaskSettings.target_names` (its
        targets and evaluation become the splits ``targets`` and ``evaluation``); None for a
        task with one target set."""

    # ----------------------------------------------------------------- proxy
    @abstractmethod
    def proxy_model(self) -> nn.Module:
        """A freshly initialised proxy model (weights are loaded from checkpoints)."""

    @abstractmethod
    def train_proxy(self, data: TaskData, out_dir: Path, progress: bool = False) -> list[ProxyCheckpoint]:
        """Train the proxy on candidates ∪ targets, saving checkpoints under ``out_dir``."""

    @abstractmethod
    def loss_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Per-sample loss for gradients: ``sample`` is one item as a batch of size 1,
        ``forward`` the functional model call (see :mod:`tarot_select.gradients`)."""

    def load_checkpoint(
        self, model: nn.Module, path: Path
    ) -> tuple[Mapping[str, torch.Tensor], Mapping[str, Any] | None]:
        """The weights of proxy checkpoint ``path`` for ``model``, and its optimizer state.

        Returns ``(state, optimizer_state)``: ``state`` maps parameter / buffer names of
        ``model`` to tensors; it may cover only part of the model (e.g. LoRA adapters: the
        featurizer then loads it with ``strict=False`` over the model's own weights and
        differentiates the chosen parameters only). ``optimizer_state`` is the Adam state
        dict (for LESS's preconditioning), or None. Default: the ``{"model", "optimizer"}``
        dict that the built-in tasks' :meth:`train_proxy` saves."""
        blob = load_torch_file(
            path, "proxy checkpoint", fix=f"delete the folder {Path(path).parent} and rerun train_proxy"
        )
        if not isinstance(blob, Mapping) or "model" not in blob:
            raise TarotInputError(f"{path}: not a proxy checkpoint (expected a dict with 'model'); rerun train_proxy")
        return blob["model"], blob.get("optimizer")

    def training_examples(
        self, indices: np.ndarray, weights: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The downstream training examples a selection stands for.

        A selection picks *candidates*; when the downstream model trains on other units
        (a scene-centric proxy selects scenes, an agent-centric model trains on their
        agents), override this to map the selected candidates ``indices`` (and their
        ``weights``) to indices of the downstream training split. Default: the identity."""
        return indices, weights

    def candidate_groups(self, data: TaskData) -> dict[str, np.ndarray]:
        """Labels of the candidates by kind of group, shape ``(n_candidates,)`` each, for
        reporting what a selection is made of. Default: ``{"source": data.sources}``;
        classifiers add ``"class"``."""
        return {"source": np.asarray(data.sources)}

    def gradient_batches(self, dataset: torch.utils.data.Dataset, batch_size: int = 64) -> Iterable[Any]:
        """Batches of ``dataset`` in index order (no shuffling) for gradient dumping."""
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)

    def embedding_blocks(self, model: nn.Module) -> list[str]:
        """Module names (``model.get_submodule(name)``) of the blocks of the proxy ``model`` in
        forward order, for :class:`~tarot_select.embed.JVPEmbedder`: the embedding is the JVP
        of the output of the ``n``-th block along random directions over the trainable
        parameters inside the first ``n`` blocks. Each named block must hold trainable
        parameters and be called by :meth:`loss_fn`'s forward. Default: refuse."""
        raise TarotInputError(
            f"task kind {self.name!r} does not name its model's blocks, so it cannot compute infdist embeddings"
        )

    def embedding_reduce(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """Reduce the tangent of a block output ``(B, ...)`` (the output's first tensor) to
        rows ``(B, k)`` of a width fixed across batches; ``batch`` is the batch as
        :meth:`loss_fn` takes it. Must be linear in ``output`` (select, mask by data, average,
        flatten) so that it equals the JVP of the reduced output. Default:
        ``output.flatten(start_dim=1)``."""
        return output.flatten(start_dim=1)

    # ------------------------------------------------------------ downstream
    @abstractmethod
    def train_downstream(
        self,
        data: TaskData,
        split: str,
        indices: np.ndarray,
        weights: np.ndarray | None,
        seed: int,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train the downstream model from scratch on ``data.split(split)[indices]``.

        ``weights`` are per-sample repeat counts or masses (None: uniform); the task
        decides how to honour them (e.g. repeat counts per epoch, or a weighted sampler
        with the same number of steps). Returns a state dict that :meth:`evaluate` takes.
        """

    @abstractmethod
    def evaluate(self, data: TaskData, state: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of a trained downstream model on ``data.evaluation``."""


@runtime_checkable
class ModelOutputs(Protocol):
    """What a task adds to :class:`Task` for influence benchmarks (LDS, :mod:`tarot_select.lds`).

    A task supports the LDS benchmark when it has all four methods (``isinstance(task,
    ModelOutputs)``; :func:`require_model_outputs` raises a clear error otherwise).
    :class:`ClassifierOutputsMixin` gives the last three to classifiers.
    """

    def downstream_model(self) -> nn.Module:
        """A freshly initialised downstream model, the architecture that
        :meth:`Task.train_downstream` trains and whose state dict it returns."""

    def output_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Per-sample scalar *model output* whose gradient attribution features use.

        Same calling convention as :meth:`Task.loss_fn` (``sample`` is one item as a batch
        of size 1), so it can be passed as the ``loss_fn`` of a
        :class:`~tarot_select.featurize.GradientFeaturizer`. For classifiers: the
        correct-class margin :func:`tarot_select.outputs.margin` (TRAK's output function).
        """

    def outputs(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """:meth:`output_fn` of the trained downstream model ``state`` on every example of
        ``split``, shape ``(n_split,)`` float64, in index order (no gradients)."""

    def train_weights(
        self, data: TaskData, state: Mapping[str, Any], split: str, model: nn.Module | None = None
    ) -> np.ndarray:
        """TRAK's out-to-loss factor per example of ``split``, shape ``(n_split,)`` float64, of
        ``state`` in ``model`` (default: a fresh :meth:`downstream_model`):
        :math:`-\\partial L / \\partial f`, i.e. :math:`1 - p_y` for the margin output."""


def require_model_outputs(task: Task) -> ModelOutputs:
    """``task`` itself, or :class:`~tarot_select.errors.TarotInputError` if it cannot serve
    the LDS benchmark (it lacks a :class:`ModelOutputs` method)."""
    if not isinstance(task, ModelOutputs):
        missing = [m for m in ("downstream_model", "output_fn", "outputs", "train_weights") if not hasattr(task, m)]
        raise TarotInputError(
            f"task kind {task.name!r} does not support the LDS benchmark (it lacks {', '.join(missing)})"
        )
    return task


class ClassifierOutputsMixin:
    """:meth:`ModelOutputs.output_fn`, :meth:`~ModelOutputs.outputs` and :meth:`~ModelOutputs.train_weights` for
    classifiers: items are ``(x, y)`` with integer labels ``y`` and the downstream model
    maps a batch of ``x`` to logits ``(B, C)``.

    Put it before :class:`Task` in the bases; the class must implement
    :meth:`ModelOutputs.downstream_model`. The output is the margin
    :math:`f = \\ell_y - \\log\\sum_{c\\ne y} e^{\\ell_c}` and the train weight
    :math:`1 - p_y = \\sigma(-f)` (with :math:`p = \\operatorname{softmax}(\\ell)`).
    ``output_description`` says so in the tables' DsDm footnote.
    """

    #: What DsDm's model-output features are, for the selection sidecar and the table footnote.
    output_description: str = "model-output (margin) gradients, Q = diag(1 - p_y)"

    def candidate_groups(self, data: TaskData) -> dict[str, np.ndarray]:
        """The sources (see :meth:`Task.candidate_groups`) and the class of every candidate."""
        groups = super().candidate_groups(data)  # type: ignore[misc]
        if isinstance(data.candidates, torch.utils.data.TensorDataset) and len(data.candidates.tensors) >= 2:
            labels = data.candidates.tensors[1]
        else:
            labels = torch.as_tensor([int(data.candidates[i][1]) for i in range(len(data.candidates))])
        return {**groups, "class": labels.cpu().numpy()}

    def output_fn(self, forward: Callable[..., Any], sample: Any) -> torch.Tensor:
        """Margin of ``forward(x)`` at label ``y`` for a sample ``(x, y)`` of batch size 1."""
        return margin(forward(sample[0]), sample[1]).sum()

    def _margins(
        self, data: TaskData, state: Mapping[str, Any], split: str, model: nn.Module | None = None
    ) -> np.ndarray:
        model = self.downstream_model() if model is None else model  # type: ignore[attr-defined]
        try:
            model.load_state_dict(dict(state), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise TarotInputError(f"state does not fit the model: {exc}") from None
        device = self.context.torch_device  # type: ignore[attr-defined]
        model.to(device).eval()
        loader = torch.utils.data.DataLoader(data.split(split), batch_size=_OUTPUT_BATCH, shuffle=False)
        with torch.no_grad():
            parts = [margin(model(batch[0].float().to(device)), batch[1].to(device)).cpu() for batch in loader]
        return torch.cat(parts).double().numpy()

    def outputs(self, data: TaskData, state: Mapping[str, Any], split: str) -> np.ndarray:
        """Margins of the trained downstream model ``state`` on ``split``, shape ``(n_split,)``."""
        return self._margins(data, state, split)

    def train_weights(
        self, data: TaskData, state: Mapping[str, Any], split: str, model: nn.Module | None = None
    ) -> np.ndarray:
        """:math:`1 - p_y = \\sigma(-f)` on ``split``, shape ``(n_split,)``, in ``(0, 1)``, of
        ``state`` loaded into ``model`` (default: a fresh downstream model; DsDm passes the proxy)."""
        f = self._margins(data, state, split, model)
        return special.expit(-f)
