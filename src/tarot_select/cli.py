"""Command line: ``tarot-select select ...`` for people who already have features.

Every problem with the input (a missing, damaged or changed file, a broken sidecar,
mismatched dimensions, NaN/Inf rows, an empty target, a budget larger than the pool, an
unknown method, an option out of range, an ``--out`` that would replace an input or its
sidecar or that cannot be written) is reported in one line on stderr with exit status 2,
before any work and without writing anything.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from ._validate import check_groups, check_pair
from .api import METHODS, WEIGHTINGS, select
from .distance import OT_METHODS, ot_distance
from .errors import TarotInputError
from .infdist import KERNELS, STRATEGIES, InfdistOptions
from .io import load_features, load_npy, sidecar_path
from .whiten import WHITEN_METHODS, Whitener

log = logging.getLogger("tarot_select")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block): ``tarot-select: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tarot-select: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _real(low: float, low_open: bool = False, high: float | None = None, name: str = "") -> Callable[[str], float]:
    if high is None:
        bound = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (
            not math.isfinite(value)
            or (value <= low if low_open else value < low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"{name + ' must be' if name else 'expected'} {bound}, got {text!r}")
        return value

    return parse


def _add_wfd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--whiten", choices=WHITEN_METHODS, default="cholesky", help="whitening (default: cholesky)")
    p.add_argument("--no-normalize", action="store_true", help="skip unit normalisation (ablation)")
    p.add_argument("--eps", type=_real(0.0), default=1e-5, help="relative ridge added to the covariance")
    p.add_argument("--ot-method", choices=OT_METHODS, default="auto", help="OT solver (default: auto)")
    p.add_argument(
        "--reg", type=_real(0.0, low_open=True), default=0.01, help="Sinkhorn regularisation, relative to the max cost"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tarot-select", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("select", help="select candidates for a target from feature files")
    s.add_argument(
        "--candidates", required=True, type=Path, help="candidate features, .npy (n x d); infdist: embeddings (n x e)"
    )
    s.add_argument("--targets", required=True, type=Path, help="target features, .npy (m x d)")
    s.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--budget", type=_int_at_least(1), help="number of samples to select")
    size.add_argument(
        "--ratio", type=_real(0.0, low_open=True, high=1.0, name="ratio"), help="fraction of the pool, in (0, 1]"
    )
    s.add_argument("--seed", type=_int_at_least(0), default=0, help="seed for random, the OTM folds and infdist")
    s.add_argument("--weighting", choices=WEIGHTINGS, help="add OT weights to the selection")
    s.add_argument("--repeat", type=_real(1.0), default=1.0, help="repetition factor R >= 1 for potential weights")
    s.add_argument("--folds", type=_int_at_least(2), default=10, help="OTM folds (default 10)")
    s.add_argument("--target-groups", type=Path, help=".npy of subtask labels per target (less)")
    s.add_argument("--no-eval", action="store_true", help="skip the OT distance of the result")
    s.add_argument("--out", required=True, type=Path, help="output CSV (index,weight) + JSON sidecar")
    _add_wfd_args(s)
    inf = s.add_argument_group("infdist (Influence Distillation)")
    inf.add_argument("--landmark-indices", type=Path, help=".npy of the landmarks' pool indices (l,), integers")
    inf.add_argument(
        "--landmark-features", type=Path, help="landmark gradient features, .npy (l x d), same projection as targets"
    )
    inf.add_argument("--kernel", choices=KERNELS, default="rbf", help="propagation kernel (default: rbf)")
    inf.add_argument(
        "--bandwidth",
        type=_real(0.0, low_open=True, name="bandwidth"),
        help="RBF bandwidth (default: median pairwise landmark distance)",
    )
    inf.add_argument(
        "--damping", type=_real(0.0, name="damping"), default=1e-2, help="kernel ridge damping (default 0.01)"
    )
    inf.add_argument("--strategy", choices=STRATEGIES, default="round_robin", help="default: round_robin")

    d = sub.add_parser("distance", help="OT distance (WFD cost) between two feature sets")
    d.add_argument("--source", required=True, type=Path)
    d.add_argument("--target", required=True, type=Path)
    _add_wfd_args(d)
    return parser


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (after symlinks and ``..``; hard links if both exist)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an ``--out`` that would replace an input or an input's sidecar, or that cannot be written.

    Runs before any input is loaded, so that a bad ``--out`` costs nothing.
    """
    side = sidecar_path(out)
    ancestor = Path(os.path.abspath(out)).parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        raise TarotInputError(f"--out {out}: {ancestor} is not a directory")
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for p in (out, side):
        if len(os.fsencode(p.name)) > name_max:
            raise TarotInputError(f"--out {out}: the file name {p.name[:40]}... is longer than {name_max} bytes")
        if os.path.isdir(p):
            raise TarotInputError(f"--out {out}: {p} is a directory; give a file name")
        if os.path.lexists(p) and not os.path.isfile(p):  # a device, a pipe, a dangling link: not ours to replace
            raise TarotInputError(f"--out {out}: {p} exists and is not a regular file; give another name")
    for inp in inputs:
        for owned, what in ((inp, "the input"), (sidecar_path(inp), f"the sidecar of the input {inp}:")):
            if _same_file(out, owned):
                raise TarotInputError(f"--out {out} is {what} {owned}; choose another output name")
            if _same_file(side, owned):
                raise TarotInputError(
                    f"--out {out}: its sidecar {side} would replace {what} {owned}; choose another output name"
                )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TarotInputError(f"--out {out}: cannot create files in {ancestor} (permission denied)")


def _cmd_select(args: argparse.Namespace) -> int:
    if args.method not in METHODS:
        raise TarotInputError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    if args.method != "otm" and args.budget is None and args.ratio is None:
        raise TarotInputError(f"method {args.method} needs --budget or --ratio")
    if args.method == "otm" and (args.budget is not None or args.ratio is not None):
        raise TarotInputError("otm chooses its own size: give neither --budget nor --ratio")
    infdist = args.method == "infdist"
    options = None
    if infdist:
        if args.landmark_indices is None or args.landmark_features is None:
            raise TarotInputError("method infdist needs --landmark-indices and --landmark-features")
        options = InfdistOptions(
            kernel=args.kernel, bandwidth=args.bandwidth, damping=args.damping, strategy=args.strategy, seed=args.seed
        )
    inputs = [args.candidates, args.targets] + ([args.target_groups] if args.target_groups is not None else [])
    if infdist:
        inputs += [args.landmark_indices, args.landmark_features]
    _check_out(args.out, inputs)
    cand = load_features(args.candidates)
    targ = load_features(args.targets)
    landmarks = None
    ckpt_source = cand
    if infdist:
        land = load_features(args.landmark_features)
        idx, _ = load_npy(args.landmark_indices, mmap=False, what="landmark indices")
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TarotInputError(
                f"--landmark-indices {args.landmark_indices}: expected a 1-D integer array, "
                f"got shape {idx.shape} dtype {idx.dtype}"
            )
        if None not in (land.checkpoint_dims, targ.checkpoint_dims) and land.checkpoint_dims != targ.checkpoint_dims:
            raise TarotInputError(
                f"checkpoint dims differ: landmark features {land.checkpoint_dims}, targets {targ.checkpoint_dims}"
            )
        landmarks = (idx, land.array)
        ckpt_source = land if land.checkpoint_dims is not None else targ
    groups = None
    if args.target_groups is not None:
        labels, _ = load_npy(args.target_groups, mmap=False, what="target groups")
        try:
            groups = check_groups(labels, targ.array.shape[0])
        except TarotInputError as exc:
            raise TarotInputError(f"--target-groups {args.target_groups}: {exc}") from None
    sel = select(
        args.method,
        cand.array,
        targ.array,
        budget=args.budget,
        ratio=args.ratio,
        whiten=args.whiten,
        normalize=not args.no_normalize,
        eps=args.eps,
        seed=args.seed,
        weighting=args.weighting,
        repeat=args.repeat,
        n_folds=args.folds,
        ot_method=args.ot_method,
        reg=args.reg,
        target_groups=groups,
        checkpoint_dims=ckpt_source.checkpoint_dims,
        checkpoint_weights=ckpt_source.checkpoint_weights,
        landmarks=landmarks,
        infdist=options,
        evaluate=not args.no_eval,
        progress=args.verbose,
    )
    extra = {"candidates": str(args.candidates), "targets": str(args.targets)}
    if infdist:
        extra.update(landmark_indices=str(args.landmark_indices), landmark_features=str(args.landmark_features))
    try:
        sel.to_csv(args.out, extra_meta=extra)
    except OSError as exc:  # checked before the selection; what is left is the disk (full, gone, read-only)
        sys.stderr.write(f"tarot-select: error: cannot write {args.out}: {exc.strerror or exc}\n")
        return 1
    msg = f"{sel.method}: selected {sel.size} of {sel.n_candidates} ({100 * sel.ratio:.2f} %)"
    if sel.ot_distance is not None:
        msg += f", OT distance to target {sel.ot_distance:.6g}"
    sys.stdout.write(f"{msg} -> {args.out}\n")
    return 0


def _cmd_distance(args: argparse.Namespace) -> int:
    src = load_features(args.source).array
    tgt = load_features(args.target).array
    check_pair(src, tgt)
    w = Whitener(args.whiten, normalize=not args.no_normalize, eps=args.eps).fit(src, tgt)
    res = ot_distance(w.transform(src), w.transform(tgt), method=args.ot_method, reg=args.reg)
    sys.stdout.write(f"{res.value:.10g}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tarot-select``; return the exit status (0 done, 2 bad input, 1 an output that could not be written)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (already reported in one line), --help or --version
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "select":
            return _cmd_select(args)
        return _cmd_distance(args)
    except TarotInputError as exc:
        sys.stderr.write(f"tarot-select: error: {' '.join(str(exc).split())}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
