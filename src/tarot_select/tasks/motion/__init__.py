"""Multi-source motion prediction: WOMD + Argoverse 2 + nuPlan -> nuScenes, an AutoBots proxy
selects, a Wayformer about ten times its size trains on the selection (TAROT §5.3, Fig. 7),
and a synthetic mini version that runs on a laptop CPU.

Data (key ``dataset``)
----------------------
Every source is a **ScenarioNet** folder (``dataset_summary.pkl``, ``dataset_mapping.pkl``
and one pickle per scenario, read through a restricted unpickler, :mod:`.scenarionet`), cut
into agent-centric samples (:mod:`.agent_centric`): one focal agent at one current step, the
``cut.agents`` nearest agents' ``cut.history`` steps and the ``cut.polylines`` nearest map
pieces of ``cut.points`` points, everything in the focal agent's frame; the target is its
next ``cut.future`` positions. Sources at other rates are resampled to ``cut.dt`` (nuScenes'
2 Hz, nuPlan's 20 Hz). Focal agents are the dataset's ``tracks_to_predict`` or, without
them, vehicles that move at least ``cut.min_displacement`` metres (the paper's nuPlan
filter); at most ``cut.max_focal`` per scene.

``synthetic`` (default)
    Generated driving scenes (:mod:`.synthetic`), one candidate source per style in
    ``sources`` (``womd``: dense intersections; ``av2``: roundabouts, one track to predict;
    ``nuplan``: fast merges at 20 Hz, partly left-hand traffic; ``glitch``: target-like
    scenes whose log drops every other frame from a random moment, so that futures are
    implausible: the source that hurts) and the targets and evaluation scenes of
    ``target_style`` (``nuscenes``: a mix of all layouts, slower, at 2 Hz, 40 %
    left-hand). The scenes are **written as ScenarioNet folders** (``scenarionet/<split>-<style>/``
    in the data folder, each style in its converter's array layout) and read back through the
    reader. Scenes are generated until each quota is met, so the split sizes are exact:
    ``per_source`` samples per source, ``n_targets``, ``n_evaluation``. Scene ``i`` of a
    style and split has its own generator seeded by ``[seed, style, split, i]``.
``scenarionet``
    Your converted folders (never downloaded): ``candidate_roots`` maps a source name to a
    folder (the paper: WOMD, AV2 and nuPlan train), ``target_root`` the target (nuScenes
    train), ``evaluation_root`` the held-out evaluation (nuScenes val). ``n_candidates``
    (per source), ``n_targets`` and ``n_evaluation`` cap the samples, taken from a seeded
    order of the scenarios (null: every scenario, in listing order). The config check
    lists each folder's summary before any job; ``prepare_data`` cuts with
    ``RunContext.threads`` processes.

:meth:`~.task.MotionTask.prepare` saves each split as :class:`~.sample.MotionSamples` parts
(``<split>/<source>-<k>/``, at most 20,000 samples each, memory-mapped by every later job)
and ``data.json``. Items are dicts of tensors (the models' batch plus ``future`` and
``future_mask``); ``sources`` names every candidate's source.

Models (``proxy.model``, ``downstream.model``)
-----------------------------------------------
:mod:`.models`: **AutoBots** (Girgis et al., ICLR 2022; the proxy by default) and
**Wayformer** (Nayakanti et al., ICRA 2023; the downstream model by default), each with a
``mini`` preset (Wayformer about 10x AutoBots' parameters, as in the paper) and a ``paper``
preset (UniTraj's widths), and per-key overrides. Both predict K = 6 modes, a bivariate
Gaussian per future step, and mode logits.

Loss (:mod:`.losses`, the project's choice)
-------------------------------------------
Winner-takes-all: the Gaussian NLL of the mode closest to the truth (mean over valid steps),
the cross-entropy of its logit, **and its mean squared error** (weight 1). The squared-error
term is not in UniTraj's Wayformer loss; we add it because with the NLL alone 2 of 8 seeds
stalled at input-independent modes in short trainings on small data (none of 9 with it).
Proxy, downstream and the per-sample gradients use this one loss; gradients go through
``torch.func.vmap`` (``features.engine: vmap``; the models avoid in-place and data-dependent
operations, and a test checks vmap against the autograd loop).

Training
--------
``proxy``: AdamW (Adam for ``weight_decay: 0``) on candidates ∪ targets, learning rate
decayed per epoch by a cosine, gradient-norm clipping (``grad_clip``); the last
``checkpoints`` epochs are saved as ``{"model", "optimizer"}`` (the Adam moments feed LESS);
the paper takes gradients from the final checkpoint (``checkpoints: 1``). ``downstream``:
the same recipe on each selection, honouring repeat counts and masses like every task.
``downstream.eval_every: k`` evaluates every ``k`` epochs on the evaluation split.

Metrics (lower is better; :mod:`.metrics`)
------------------------------------------
``brier_min_fde`` (minFDE over the 6 modes plus :math:`(1 - p)^2` of the best mode's
probability, metres), ``best_brier_min_fde`` (best of the evaluations during training and
the final one: the paper's "best validation score") and ``best_epoch``, ``min_ade``,
``min_fde``, ``miss_rate`` (final minFDE > 2 m), ``constant_velocity_brier_min_fde`` (the
baseline). ``downstream.primary`` picks the tables' metric: ``final`` or ``best``.

Transfer, made explicit: ``downstream.also_proxy_arch: true`` trains the proxy's
architecture too on every selection (same samples, same order) and reports it as
``proxy_arch_brier_min_fde``, ``proxy_arch_best_brier_min_fde`` and the other
``proxy_arch_*`` metrics beside the downstream model's: the same selection evaluated with
both architectures.

Influence benchmarks (LDS): the task implements :class:`~tarot_select.tasks.base.ModelOutputs`
for regression: the model output is the negative per-sample loss :math:`f = -L` (a larger
output is a better prediction, as the margin is for a classifier), so TRAK's out-to-loss
factor :math:`-\\partial L / \\partial f` is exactly 1 (``train_weights`` returns ones; DsDm's
:math:`Q` is the identity). A trained model's state dict carries its evaluation records as
buffers, so it loads into :meth:`~.task.MotionTask.downstream_model` as the LDS stages need.

Settings (:class:`~.settings.MotionSettings`, every key in ``config/tasks/motion.yaml``)
-----------------------------------------------------------------------------------------
``dataset``                                    ``synthetic`` | ``scenarionet``
``sources``, ``target_style``, ``per_source``   synthetic (``[womd, av2, nuplan, glitch]``, ``nuscenes``, 150)
``candidate_roots``, ``target_root``, ``evaluation_root``, ``n_candidates``   scenarionet
``n_targets``, ``n_evaluation``                 100, 200 (scenarionet: caps, null: all)
``cut``          ``{history: 21, future: 60, agents: 8, polylines: 32, points: 10, point_spacing: 1.0,
                 dt: 0.1, min_displacement: 2.0, max_focal: 4, stride: 0, use_tracks_to_predict: true,
                 focal_types: [VEHICLE]}``
``proxy``        ``{model: {arch: autobots, preset: mini, ...}, epochs: 10, lr: 0.001, batch_size: 32,
                 weight_decay: 0.0, grad_clip: 5.0, checkpoints: 1}``
``downstream``   ``{model: {arch: wayformer, preset: mini, ...}, epochs: 20, ..., eval_every: 0,
                 primary: final, also_proxy_arch: false}``
"""

from __future__ import annotations

from ..registry import TaskSpec
from .settings import MotionSettings

__all__ = ["SPEC"]

SPEC = TaskSpec(
    kind="motion",
    settings=MotionSettings,
    task="tarot_select.tasks.motion.task:MotionTask",
    model_outputs=True,
    summary="multi-source motion prediction, AutoBots proxy -> Wayformer: synthetic or ScenarioNet (TAROT Fig. 7)",
)
