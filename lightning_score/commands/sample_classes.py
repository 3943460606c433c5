"""``lscore sample-classes CKPT --out DIR``: class-conditional samples, one grid row per class.

Classifier-free guidance of a class-conditional model (trained with ``model.num_classes``), or,
with ``--classifier CLS.ckpt``, classifier guidance of the model's unconditional score by a
noise-conditional classifier (``lscore train-classifier``). ``--scale`` is the guidance scale
(1: the conditional distribution). ``--judge JUDGE.ckpt``, a classifier trained independently,
reports the fraction of samples it assigns to their class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_score.commands.options import count, non_negative
from lightning_score.commands.sample import add_model_arguments, add_sampling_arguments
from lightning_score.outputs import add_overwrite_argument


def _classes(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"classes must be ids like 0,3,7, got '{text}'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--classes", type=_classes, default=None, help="class ids, e.g. 0,3,7 (default: all)"
    )
    parser.add_argument("--per-class", type=count, default=8, help="samples of each class")
    parser.add_argument(
        "--scale", type=non_negative, default=1.0, help="guidance scale (1: p(x|y))"
    )
    parser.add_argument(
        "--classifier", type=Path, default=None, help="noisy classifier for classifier guidance"
    )
    parser.add_argument(
        "--judge", type=Path, default=None, help="independent classifier: report its accuracy"
    )
    add_overwrite_argument(parser)
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from lightning_score.commands.sample import resolve_device, sampling_from_args
    from lightning_score.conditioning.class_conditional import (
        CLASS_SAMPLE_FILES,
        judged_accuracy,
        sample_classes,
        save_class_samples,
    )
    from lightning_score.conditioning.classifier import check_classifier_fits, load_classifier
    from lightning_score.data import class_name, data_shape
    from lightning_score.outputs import check_outputs
    from lightning_score.training.checkpoint import load_score_model

    given = [Path(args.checkpoint), *(p for p in (args.classifier, args.judge) if p is not None)]
    check_outputs([args.out / name for name in CLASS_SAMPLE_FILES], args.overwrite, given)
    device = resolve_device(args.device)
    model, exp = load_score_model(args.checkpoint, ema=args.ema, map_location=device)
    classifier = judge = None
    if args.classifier is not None:
        classifier, classifier_cfg = load_classifier(args.classifier, device)
        check_classifier_fits(classifier_cfg, exp)
    if args.judge is not None:
        judge, judge_cfg = load_classifier(args.judge, device)
        check_classifier_fits(judge_cfg, exp)
    num_classes = classifier.num_classes if classifier is not None else model.num_classes
    classes = args.classes if args.classes is not None else list(range(num_classes))
    cfg = sampling_from_args(exp.sampling, args)
    result = sample_classes(
        model,
        data_shape(exp.data),
        classes,
        args.per_class,
        cfg,
        classifier=classifier,
        scale=args.scale,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=args.progress,
    )
    method = "classifier guidance" if classifier is not None else "classifier-free guidance"
    accuracy = judged_accuracy(judge, result) if judge is not None else None
    summary = {
        "method": method,
        "scale": args.scale,
        "per_class": args.per_class,
        "nfe": result.nfe,
        "judge_accuracy": accuracy,
    }
    names = [class_name(exp.data, c) for c in classes]
    save_class_samples(result, args.out, f"{method}, scale {args.scale:g}", summary, names)
    judged = "" if accuracy is None else f"; judge accuracy {accuracy:.3f}"
    print(f"{method} (scale {args.scale:g}), {result.nfe} NFE{judged} -> {args.out}")
    return 0
