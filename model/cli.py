"""The ``e4srec`` command line: serve, pretrain-ids, train, evaluate, bundle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path

from model.metrics import format_metrics_table

logger = logging.getLogger("e4srec")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    logger.info("wrote %s", path)


def cmd_pretrain_ids(args: argparse.Namespace) -> int:
    from model.data import leave_one_out, read_interactions
    from model.pretrain_ids import PretrainOptions, pretrain_ids

    options = PretrainOptions(
        hidden_size=args.hidden_size,
        num_blocks=args.num_blocks,
        num_heads=args.num_heads,
        feedforward_size=args.feedforward_size,
        block=args.block,
        position_origin=args.position_origin,
        max_length=args.max_length,
        dropout=args.dropout,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        lr_decay_patience=args.lr_decay_patience,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        device=args.device,
    )
    split = leave_one_out(read_interactions(args.data))
    result = pretrain_ids(split, Path(args.output), options)
    print(format_metrics_table({"sasrec (test)": result["test"], "sasrec (valid)": result["valid"]}))
    return 0


def cmd_popularity(args: argparse.Namespace) -> int:
    from model.data import leave_one_out, read_interactions
    from model.evaluate import evaluate_full_ranking, popularity_score_fn, popularity_scores

    split = leave_one_out(read_interactions(args.data))
    counts = popularity_scores(split.train, split.num_items)
    metrics = evaluate_full_ranking(popularity_score_fn(counts), split.cases(args.split), progress=not args.quiet)
    print(format_metrics_table({f"popularity ({args.split})": metrics}))
    source = Path(args.data)
    label = f"{source.name}/sequences.txt" if source.is_dir() else source.name
    _write_json(args.output, {"model": "popularity", "split": args.split, "data": label, **metrics})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import train_from_args

    return train_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.backbone import BackboneSettings, load_backbone
    from model.bundle import read_bundle
    from model.data import leave_one_out, read_interactions
    from model.e4srec import E4SRec
    from model.evaluate import evaluate_full_ranking

    split = leave_one_out(read_interactions(args.data))
    backbone = load_backbone(BackboneSettings(source=args.backbone, device=args.device, dtype=args.dtype))
    bundle = read_bundle(Path(args.bundle), expected_fingerprint=backbone.fingerprint)
    module = E4SRec.from_bundle(backbone, bundle)
    cases = split.cases(args.split)
    if args.max_users is not None:
        cases = cases[: args.max_users]
    score = partial(module.score_histories, use_prefix_cache=True)
    metrics = evaluate_full_ranking(score, cases, batch_size=args.batch_size, progress=not args.quiet)
    print(format_metrics_table({f"{bundle.manifest.name}@{bundle.manifest.version} ({args.split})": metrics}))
    _write_json(args.output, {"bundle": bundle.manifest.name, "version": bundle.manifest.version, "split": args.split, **metrics})
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {}
    if args.adapters_dir is not None:
        overrides["adapters_dir"] = args.adapters_dir
    if args.backbone is not None:
        overrides["backbone"] = args.backbone
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    from model.bundle import read_manifest

    manifest = read_manifest(Path(args.bundle))
    print(json.dumps(manifest.to_dict(), indent=2))
    return 0


def cmd_bundle_pack(args: argparse.Namespace) -> int:
    from model.bundle import read_bundle
    from service.uploads import pack_bundle

    folder = Path(args.bundle)
    bundle = read_bundle(folder)
    output = Path(args.output) if args.output else Path(f"{bundle.manifest.name}-{bundle.manifest.version}.tar.gz")
    pack_bundle(folder, output)
    print(f"packed bundle {bundle.manifest.name}@{bundle.manifest.version} into {output} ({output.stat().st_size} bytes)")
    return 0


def cmd_plot_training(args: argparse.Namespace) -> int:
    from model.plots import plot_training_curves

    output = plot_training_curves([Path(folder) for folder in args.bundles], Path(args.output))
    print(f"wrote {output}")
    return 0


def cmd_plot_pretrain(args: argparse.Namespace) -> int:
    from model.plots import plot_pretrain_curves

    output = plot_pretrain_curves([Path(folder) for folder in args.runs], Path(args.output))
    print(f"wrote {output}")
    return 0


def cmd_prepare_backbone(args: argparse.Namespace) -> int:
    from model.backbone import BackboneSettings, load_backbone

    backbone = load_backbone(BackboneSettings(source=args.backbone))
    print(f"backbone {backbone.name} ready: hidden {backbone.hidden_size}, fingerprint {backbone.fingerprint}")
    return 0


def _add_backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="smollm2", help="'smollm2' (embedded default), a Hugging Face model folder, or a .gguf file")
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="backbone weight dtype")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e4srec", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--adapters-dir", default=None, help="bundle repository folder (default: E4SREC_ADAPTERS_DIR or ./adapters)")
    serve.add_argument("--backbone", default=None, help="backbone source (default: E4SREC_BACKBONE or smollm2)")
    serve.set_defaults(handler=cmd_serve)

    prepare = commands.add_parser("prepare-backbone", help="convert a backbone into the safetensors cache once")
    prepare.add_argument("--backbone", default="smollm2", help="'smollm2', a model folder or a .gguf file")
    prepare.set_defaults(handler=cmd_prepare_backbone)

    pretrain = commands.add_parser("pretrain-ids", help="train SASRec and export its item embedding table")
    pretrain.add_argument("--data", required=True, help="sequences.txt, a folder containing it, or an interactions CSV")
    pretrain.add_argument("--output", required=True, help="output folder for item_embeddings.safetensors and metrics.json")
    pretrain.add_argument("--hidden-size", type=int, default=64, help="embedding size (id_dim of the bundles trained on it)")
    pretrain.add_argument("--num-blocks", type=int, default=2, help="self-attention blocks")
    pretrain.add_argument("--num-heads", type=int, default=1, help="attention heads per block; must divide --hidden-size")
    pretrain.add_argument(
        "--block",
        choices=("pre-norm", "query-norm"),
        default="pre-norm",
        help="pre-norm: layer norm before attention and feed-forward, GELU; query-norm: the SASRec paper's block (layer norm on the attention queries only, ReLU)",
    )
    pretrain.add_argument(
        "--position-origin",
        choices=("last", "first"),
        default="last",
        help="last: positions count back from the most recent item (they encode recency); first: positions count from the oldest item kept, as in the SASRec paper",
    )
    pretrain.add_argument("--feedforward-size", type=int, default=None, help="inner width of the feed-forward layers (default: --hidden-size)")
    pretrain.add_argument("--max-length", type=int, default=50, help="maximum history length in items")
    pretrain.add_argument("--dropout", type=float, default=0.5, help="dropout rate")
    pretrain.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    pretrain.add_argument(
        "--lr-decay",
        type=float,
        default=0.3,
        help="multiply the learning rate by this factor (in (0, 1]) once more than --lr-decay-patience epochs pass without validation gain; 1 keeps it constant",
    )
    pretrain.add_argument("--lr-decay-patience", type=int, default=3, help="epochs without validation gain tolerated before each learning-rate decay")
    pretrain.add_argument("--batch-size", type=int, default=128, help="sequences per step")
    pretrain.add_argument("--max-epochs", type=int, default=200, help="upper bound on epochs")
    pretrain.add_argument("--patience", type=int, default=10, help="epochs without validation NDCG@10 gain before stopping")
    pretrain.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget in minutes")
    pretrain.add_argument("--seed", type=int, default=0, help="random seed")
    pretrain.add_argument("--device", default="cpu", help="torch device")
    pretrain.set_defaults(handler=cmd_pretrain_ids)

    popularity = commands.add_parser("popularity", help="evaluate the most-popular-items baseline")
    popularity.add_argument("--data", required=True, help="sequences.txt, a folder containing it, or an interactions CSV")
    popularity.add_argument("--split", default="test", choices=["valid", "test"], help="evaluation split")
    popularity.add_argument("--output", type=Path, default=None, help="write metrics JSON here")
    popularity.add_argument("--quiet", action="store_true", help="no progress bar")
    popularity.set_defaults(handler=cmd_popularity)

    train = commands.add_parser("train", help="train an E4SRec adapter bundle")
    _add_backbone_options(train)
    from model.train import add_train_arguments

    add_train_arguments(train)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="HR@k and NDCG@k of a bundle with full ranking")
    _add_backbone_options(evaluate)
    evaluate.add_argument("--bundle", required=True, help="bundle folder")
    evaluate.add_argument("--data", required=True, help="sequences.txt, a folder containing it, or an interactions CSV")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"], help="evaluation split")
    evaluate.add_argument("--max-users", type=int, default=None, help="evaluate only the first N users of the split")
    evaluate.add_argument("--batch-size", type=int, default=64, help="histories per forward pass")
    evaluate.add_argument("--output", type=Path, default=None, help="write metrics JSON here")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=cmd_evaluate)

    plot = commands.add_parser("plot-training", help="plot the training curves recorded in bundle manifests")
    plot.add_argument("bundles", nargs="+", help="bundle folders or manifest JSON files (such as those exported to docs/results)")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.set_defaults(handler=cmd_plot_training)

    plot_pretrain = commands.add_parser("plot-pretrain", help="plot the SASRec curves recorded by pretrain-ids runs")
    plot_pretrain.add_argument("runs", nargs="+", help="pretrain-ids output folders (with metrics.json)")
    plot_pretrain.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot_pretrain.set_defaults(handler=cmd_plot_pretrain)

    bundle = commands.add_parser("bundle", help="bundle tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    inspect = bundle_commands.add_parser("inspect", help="print a bundle's manifest")
    inspect.add_argument("bundle", help="bundle folder")
    inspect.set_defaults(handler=cmd_bundle_inspect)
    pack = bundle_commands.add_parser("pack", help="make an upload archive (tar.gz) from a bundle folder")
    pack.add_argument("bundle", help="bundle folder")
    pack.add_argument("-o", "--output", default=None, help="archive path (default: NAME-VERSION.tar.gz)")
    pack.set_defaults(handler=cmd_bundle_pack)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.backbone import BackboneError
    from model.bundle import BundleError
    from model.data import DataFormatError
    from model.distillation import DistillationError
    from model.pretrain_ids import PretrainOptionsError
    from model.sasrec import SASRecConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.handler(args)
    except (
        BackboneError, BundleError, DataFormatError, DistillationError, FileNotFoundError, PretrainOptionsError, SASRecConfigError,
    ) as error:
        print(f"e4srec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
