"""Command line: ``tarot-select select ...`` for people who already have features.

Every problem with the input (a missing file, mismatched dimensions, NaN/Inf rows, an
empty target, a budget larger than the pool, an unknown method) is reported in one
line on stderr with exit status 2, before any work and without writing anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .api import METHODS, WEIGHTINGS, select
from .distance import OT_METHODS, ot_distance
from .errors import TarotInputError
from .io import load_features
from .whiten import WHITEN_METHODS, Whitener

log = logging.getLogger("tarot_select")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _add_wfd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--whiten", choices=WHITEN_METHODS, default="cholesky", help="whitening (default: cholesky)")
    p.add_argument("--no-normalize", action="store_true", help="skip unit normalisation (ablation)")
    p.add_argument("--eps", type=float, default=1e-5, help="relative ridge added to the covariance")
    p.add_argument("--ot-method", choices=OT_METHODS, default="auto", help="OT solver (default: auto)")
    p.add_argument("--reg", type=float, default=0.01, help="Sinkhorn regularisation, relative to the max cost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tarot-select", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("select", help="select candidates for a target from feature files")
    s.add_argument("--candidates", required=True, type=Path, help="candidate features, .npy (n x d)")
    s.add_argument("--targets", required=True, type=Path, help="target features, .npy (m x d)")
    s.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--budget", type=_positive_int, help="number of samples to select")
    size.add_argument("--ratio", type=float, help="fraction of the pool to select, in (0, 1]")
    s.add_argument("--seed", type=int, default=0, help="seed for random and the OTM folds")
    s.add_argument("--weighting", choices=WEIGHTINGS, help="add OT weights to the selection")
    s.add_argument("--repeat", type=float, default=1.0, help="repetition factor R for potential weights")
    s.add_argument("--folds", type=int, default=10, help="OTM folds (default 10)")
    s.add_argument("--target-groups", type=Path, help=".npy of subtask labels per target (less)")
    s.add_argument("--no-eval", action="store_true", help="skip the OT distance of the result")
    s.add_argument("--out", required=True, type=Path, help="output CSV (index,weight) + JSON sidecar")
    _add_wfd_args(s)

    d = sub.add_parser("distance", help="OT distance (WFD cost) between two feature sets")
    d.add_argument("--source", required=True, type=Path)
    d.add_argument("--target", required=True, type=Path)
    _add_wfd_args(d)
    return parser


def _cmd_select(args: argparse.Namespace) -> int:
    if args.method not in METHODS:
        raise TarotInputError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    if args.method != "otm" and args.budget is None and args.ratio is None:
        raise TarotInputError(f"method {args.method} needs --budget or --ratio")
    if args.out.is_dir():
        raise TarotInputError(f"--out {args.out} is a directory; give a file name")
    cand = load_features(args.candidates)
    targ = load_features(args.targets)
    groups = None
    if args.target_groups is not None:
        if not args.target_groups.is_file():
            raise TarotInputError(f"target groups file not found: {args.target_groups}")
        groups = np.load(args.target_groups, allow_pickle=False)
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
        checkpoint_dims=cand.checkpoint_dims,
        checkpoint_weights=cand.checkpoint_weights,
        evaluate=not args.no_eval,
        progress=args.verbose,
    )
    sel.to_csv(args.out, extra_meta={"candidates": str(args.candidates), "targets": str(args.targets)})
    msg = f"{sel.method}: selected {sel.size} of {sel.n_candidates} ({100 * sel.ratio:.2f} %)"
    if sel.ot_distance is not None:
        msg += f", OT distance to target {sel.ot_distance:.6g}"
    sys.stdout.write(f"{msg} -> {args.out}\n")
    return 0


def _cmd_distance(args: argparse.Namespace) -> int:
    src = load_features(args.source).array
    tgt = load_features(args.target).array
    from ._validate import check_pair

    check_pair(src, tgt)
    w = Whitener(args.whiten, normalize=not args.no_normalize, eps=args.eps).fit(src, tgt)
    res = ot_distance(w.transform(src), w.transform(tgt), method=args.ot_method, reg=args.reg)
    sys.stdout.write(f"{res.value:.10g}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "select":
            return _cmd_select(args)
        return _cmd_distance(args)
    except TarotInputError as exc:
        sys.stderr.write(f"tarot-select: error: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
