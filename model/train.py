"""``e4srec train``: train an E4SRec bundle on one data set.

The backbone stays frozen. The ID table comes from the SASRec stage
(``e4srec pretrain-ids``) and is frozen unless ``--train-ids`` is given. The
projector, LoRA adapter and scoring head are trained with softmax
cross-entropy over all items.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from model.backbone import Backbone, BackboneSettings, load_backbone
from model.batching import BATCH_ORDER_LENGTH, BATCH_ORDERS, epoch_batches
from model.bundle import write_bundle
from model.checkpoint import BestState, TrainingState, load_checkpoint, save_checkpoint
from model.data import LeaveOneOutSplit, leave_one_out, read_interactions
from model.distillation import DistillationSettings, distillation_loss, load_teachers, teacher_logits
from model.distributed import DistributedContext
from model.e4srec import DEFAULT_INSTRUCTION, HEAD_LINEAR, HEAD_TIED, E4SRec, E4SRecConfig
from model.evaluate import evaluate_full_ranking
from model.lora import DEFAULT_TARGET_MODULES, LoraSettings, attach_adapter
from model.metrics import format_metrics_table
from model.pretrain_ids import ITEM_EMBEDDINGS_FILE, ITEM_EMBEDDINGS_KEY, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    name: str
    output: Path
    ids: Path | None
    max_history_length: int = 20
    instruction: str = DEFAULT_INSTRUCTION
    response: str = ""
    head: str = HEAD_TIED
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    batch_size: int = 32
    # On Beauty, shuffled batches gave the same test quality after one epoch as
    # length-grouped ones after two, but each step took about 1.5 times as long.
    batch_order: str = BATCH_ORDER_LENGTH
    epochs: float = 1.0
    max_minutes: float | None = None
    max_train_users: int | None = None
    autocast_bf16: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_every_s: float = 300.0
    train_ids: bool = False
    random_id_dim: int = 64
    # pretrain-ids folders whose SASRec models (their mean scores) are distilled into the bundle; empty trains on labels only.
    teachers: tuple[Path, ...] = ()
    distillation: DistillationSettings = field(default_factory=DistillationSettings)
    # Over 2 epochs on all Beauty users "cosine" beat "constant" by 0.0030 test HR@10,
    # although on 125-step runs "constant" won by 0.0086 (docs/quality.md).
    lr_schedule: str = "cosine"
    eval_every: int | None = None
    valid_users: int = 2000
    patience: int = 3
    gradient_checkpointing: bool = False
    eval_split: str = "test"
    eval_users: int | None = None
    eval_batch_size: int = 64
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        # Checked here so a wrong order fails before the backbone and ID table are loaded.
        if self.batch_order not in BATCH_ORDERS:
            raise ValueError(f"batch_order {self.batch_order!r} is invalid; use one of {', '.join(BATCH_ORDERS)}")


def load_id_table(path: Path, num_items: int) -> torch.Tensor:
    """Read the SASRec item table, checking it covers every item ID."""
    file_path = path / ITEM_EMBEDDINGS_FILE if path.is_dir() else path
    if not file_path.is_file():
        raise FileNotFoundError(f"ID embedding file {file_path} does not exist; run e4srec pretrain-ids first")
    table = load_file(str(file_path))[ITEM_EMBEDDINGS_KEY].float()
    if table.shape[0] != num_items + 1:
        raise ValueError(
            f"ID table {file_path} has {table.shape[0]} rows, but the data has {num_items} items "
            f"(expected {num_items + 1} rows including padding row 0); pretrain on the same data"
        )
    return table


def _learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _index_of_step(curve: list[dict], step: int) -> int:
    return next(index for index, point in enumerate(curve) if point["step"] == step)


def _loss_curve(losses: list[float], points: int = 200) -> list[list[float]]:
    """Mean training loss over up to ``points`` equal windows, as [step, loss] pairs."""
    if not losses:
        return []
    window = max(1, math.ceil(len(losses) / points))
    return [
        [start + window, round(sum(losses[start : start + window]) / len(losses[start : start + window]), 4)]
        for start in range(0, len(losses), window)
    ]


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def train_bundle(backbone: Backbone, split: LeaveOneOutSplit, options: TrainOptions, data_description: dict) -> dict:
    """Train, evaluate and write one bundle; return the evaluation metrics.

    Under torchrun every process calls this; process 0 returns the metrics
    and writes the bundle, the others return an empty dict.
    """
    distributed = DistributedContext.from_environment(backbone.device)
    seed_everything(options.seed + distributed.rank)
    if options.ids is None:
        id_table = torch.randn(split.num_items + 1, options.random_id_dim) * 0.02
        id_table[0] = 0.0
    else:
        id_table = load_id_table(options.ids, split.num_items)
    teacher = None
    if options.teachers:
        teacher = load_teachers(list(options.teachers), split.num_items, options.max_history_length, backbone.device)
    config = E4SRecConfig(
        num_items=split.num_items,
        id_dim=id_table.shape[1],
        hidden_size=backbone.hidden_size,
        max_history_length=options.max_history_length,
        instruction=options.instruction,
        response=options.response,
        instruction_ids=backbone.encode_text(options.instruction),
        response_ids=backbone.encode_text(options.response),
        head=options.head,
        lora=options.lora,
    )
    adapter_name = f"{options.name}--training"
    module = E4SRec(backbone, config, adapter_name=adapter_name)
    with torch.no_grad():
        module.id_embeddings.weight.copy_(id_table)
    module.id_embeddings.weight.requires_grad_(options.train_ids)
    module.to(backbone.device)
    attach_adapter(backbone, adapter_name, options.lora, trainable=True)
    if options.gradient_checkpointing:
        # Recomputes each decoder layer's activations in the backward pass, to
        # fit larger backbones in memory at the cost of compute.
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    trainable += [parameter for name, parameter in backbone.peft_model.named_parameters() if parameter.requires_grad]
    trainable_count = sum(parameter.numel() for parameter in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)

    sequences = [sequence for sequence in split.train if len(sequence) >= 2]
    if options.max_train_users is not None:
        sequences = random.Random(options.seed).sample(sequences, min(options.max_train_users, len(sequences)))
    batches_per_epoch = math.ceil(len(sequences) / options.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / distributed.world_size)
    total_steps = max(1, int(options.epochs * steps_per_epoch))
    logger.info(
        "training bundle %s: %d sequences, %d steps (%.2f epochs), %d trainable parameters",
        options.name, len(sequences), total_steps, options.epochs, trainable_count,
    )

    state = TrainingState()
    best: BestState | None = None
    if options.checkpoint_dir is not None:
        restored = load_checkpoint(options.checkpoint_dir, module, backbone, adapter_name, optimizer)
        if restored is not None:
            state = restored
            best = BestState.load(options.checkpoint_dir)
            logger.info("resumed bundle %s from step %d (%.0f s trained)", options.name, state.step, state.elapsed_s)

    valid_cases = split.valid
    if options.valid_users < len(valid_cases):
        valid_cases = random.Random(1).sample(valid_cases, options.valid_users)

    module.train()
    autocast = torch.autocast(device_type=backbone.device.type, dtype=torch.bfloat16, enabled=options.autocast_bf16)

    def validate() -> bool:
        """Measure validation NDCG@10 at the current step, keep the best weights, and return whether patience ran out."""
        nonlocal best
        module.eval()
        with autocast:
            valid = evaluate_full_ranking(partial(module.score_histories, use_prefix_cache=True), valid_cases, batch_size=options.eval_batch_size, progress=False)
        module.train()
        state.valid_curve.append({"step": state.step, "hr_at_10": valid["hr_at_10"], "ndcg_at_10": valid["ndcg_at_10"]})
        progress.write(f"step {state.step}: valid NDCG@10 {valid['ndcg_at_10']:.4f}, HR@10 {valid['hr_at_10']:.4f}")
        if best is None or valid["ndcg_at_10"] > best.ndcg_at_10:
            best = BestState.capture(module, backbone, adapter_name, state.step, valid["ndcg_at_10"])
            if options.checkpoint_dir is not None:
                best.save(options.checkpoint_dir)
            return False
        return len(state.valid_curve) - 1 - _index_of_step(state.valid_curve, best.step) >= options.patience

    session_started = time.monotonic()
    last_checkpoint = session_started
    progress = tqdm(
        total=total_steps, initial=state.step, desc=f"train {options.name}", unit="step",
        disable=not options.progress or not distributed.is_main,
    )
    batches_epoch, batches = -1, []
    while state.step < total_steps:
        epoch, position = divmod(state.step, steps_per_epoch)
        if epoch != batches_epoch:
            batches_epoch, batches = epoch, epoch_batches(options.batch_order, sequences, options.batch_size, seed=options.seed * 1000 + epoch)
        batch = batches[(position * distributed.world_size + distributed.rank) % len(batches)]

        for group in optimizer.param_groups:
            factor = _learning_rate_factor(state.step, options.warmup_steps, total_steps, options.lr_schedule)
            group["lr"] = options.learning_rate * factor
        with autocast:
            if teacher is None:
                loss, targets = module.training_loss(batch)
            else:
                logits, labels = module.training_logits(batch)
                soft_targets = teacher_logits(teacher, batch, config.max_history_length, with_response=bool(config.response_ids))
                loss, targets = distillation_loss(logits, labels, soft_targets, options.distillation), labels.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

        state.step += 1
        state.targets += targets
        state.losses.append(round(loss.item(), 5))
        elapsed = state.elapsed_s + time.monotonic() - session_started
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", epoch=f"{state.step / steps_per_epoch:.2f}")

        stop_early = False
        if options.eval_every is not None and state.step % options.eval_every == 0 and distributed.is_main:
            stop_early = validate()
            if stop_early:
                logger.info("early stop of bundle %s at step %d: no validation gain since step %d", options.name, state.step, best.step)

        out_of_time = distributed.agree(options.max_minutes is not None and elapsed > options.max_minutes * 60)
        stop_early = distributed.agree(stop_early)
        due = time.monotonic() - last_checkpoint > options.checkpoint_every_s
        if options.checkpoint_dir is not None and distributed.is_main and (due or out_of_time or state.step == total_steps):
            save_checkpoint(options.checkpoint_dir, module, backbone, adapter_name, optimizer, state, elapsed)
            last_checkpoint = time.monotonic()
        if out_of_time:
            logger.info("stopping bundle %s at the time budget of %.1f minutes (step %d)", options.name, options.max_minutes, state.step)
            break
        if stop_early:
            break
    training_time = state.elapsed_s + time.monotonic() - session_started
    if not distributed.is_main:
        progress.close()
        distributed.barrier()
        distributed.close()
        return {}

    # Without this, a schedule that ends between two validations (or at the
    # time budget) never compares its final weights with the best step so far.
    validated_last = bool(state.valid_curve) and state.valid_curve[-1]["step"] == state.step
    if options.eval_every is not None and not validated_last:
        validate()
    progress.close()
    if best is not None:
        best.restore(module, backbone, adapter_name)
        logger.info("bundle %s keeps the weights of step %d (valid NDCG@10 %.4f)", options.name, best.step, best.ndcg_at_10)

    module.eval()
    cases = split.cases(options.eval_split)
    if options.eval_users is not None and options.eval_users < len(cases):
        cases = random.Random(0).sample(cases, options.eval_users)
    with autocast:
        metrics = evaluate_full_ranking(
            partial(module.score_histories, use_prefix_cache=True), cases, batch_size=options.eval_batch_size,
            progress=options.progress, description=f"evaluate {options.name} ({options.eval_split})",
        )
    logger.info("bundle %s %s metrics:\n%s", options.name, options.eval_split, format_metrics_table({options.name: metrics}))

    training = {
        "data": data_description,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "id_embeddings": str(options.ids) if options.ids is not None else "random",
        "teacher": [str(folder) for folder in options.teachers] or None,
        "distillation": asdict(options.distillation) if options.teachers else None,
        "steps": state.step,
        "epochs": round(state.step / steps_per_epoch, 3),
        "training_targets": state.targets,
        "train_users": len(sequences),
        "batch_size": options.batch_size,
        "batch_order": options.batch_order,
        "learning_rate": options.learning_rate,
        "autocast_bf16": options.autocast_bf16,
        "trainable_parameters": trainable_count,
        "training_time_s": round(training_time, 1),
        "machine": machine_description(backbone.device),
        "final_loss": state.losses[-1] if state.losses else None,
        "train_ids": options.train_ids,
        "processes": distributed.world_size,
        "gradient_checkpointing": options.gradient_checkpointing,
        "lr_schedule": options.lr_schedule,
        "best_step": best.step if best is not None else None,
        "valid_curve": state.valid_curve,
        "loss_curve": _loss_curve(state.losses),
    }
    evaluation = {options.eval_split: metrics}
    write_bundle(module, options.output, options.name, training=training, metrics=evaluation)
    distributed.barrier()
    distributed.close()
    return metrics


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="sequences.txt, a folder containing it, or an interactions CSV")
    parser.add_argument("--ids", required=True, help="folder or file from e4srec pretrain-ids (item_embeddings.safetensors), or 'random'")
    parser.add_argument("--random-id-dim", type=int, default=64, help="id_dim of a random ID table (with --ids random)")
    parser.add_argument("--train-ids", action="store_true", help="fine-tune the ID table instead of keeping it frozen")
    parser.add_argument(
        "--teacher",
        nargs="+",
        default=[],
        metavar="RUN",
        help="pretrain-ids folder whose SASRec model (sasrec.safetensors) is distilled into the bundle; "
        "several folders (other seeds) teach with their mean scores",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=DistillationSettings.weight,
        help=f"share of the loss from the teacher's soft targets (with --teacher, default {DistillationSettings.weight})",
    )
    parser.add_argument(
        "--distill-temperature",
        type=float,
        default=DistillationSettings.temperature,
        help=f"softmax temperature of the teacher and bundle scores (with --teacher, default {DistillationSettings.temperature})",
    )
    parser.add_argument("--name", required=True, help="bundle name (a-z, 0-9, '-', '_')")
    parser.add_argument("--output", required=True, help="bundle folder to write, for example adapters/NAME")

    parser.add_argument("--max-history-length", type=int, default=20, help="most recent items the model sees")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="prompt text before the history")
    parser.add_argument("--response", default="", help="prompt text after the history (empty: score at the last item)")
    parser.add_argument("--head", default=HEAD_TIED, choices=[HEAD_TIED, HEAD_LINEAR], help="tied: dot product with the ID table; linear: one output per item")

    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling alpha")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--lora-targets", default=",".join(DEFAULT_TARGET_MODULES), help="comma-separated module names that get LoRA")

    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate, reached after the warm-up")
    parser.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"], help="after warm-up: cosine decay to 10%% of --lr, or constant")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate on validation users every N steps and keep the best weights")
    parser.add_argument("--valid-users", type=int, default=2000, help="validation users sampled for --eval-every")
    parser.add_argument("--patience", type=int, default=3, help="evaluations without validation NDCG@10 gain before stopping early")
    parser.add_argument("--batch-size", type=int, default=32, help="user sequences per step")
    parser.add_argument(
        "--batch-order", default=BATCH_ORDER_LENGTH, choices=BATCH_ORDERS,
        help="length groups histories of similar length (less padding, faster). shuffled mixes lengths in every batch",
    )
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training sequences (fractions allowed)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes (checkpointed)")
    parser.add_argument("--max-train-users", type=int, default=None, help="train on a fixed random sample of this many users")

    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (use with --dtype bfloat16 for speed)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass to save memory")
    parser.add_argument("--checkpoint-dir", default=None, help="save resumable checkpoints here; an existing checkpoint is resumed")
    parser.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")

    parser.add_argument("--eval-split", default="test", choices=["valid", "test"], help="split for the final evaluation")
    parser.add_argument("--eval-users", type=int, default=None, help="evaluate a fixed random sample of this many users (default: all)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="histories per evaluation forward pass")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def train_from_args(args: argparse.Namespace) -> int:
    data = read_interactions(args.data)
    split = leave_one_out(data)
    backbone = load_backbone(BackboneSettings(source=args.backbone, device=args.device, dtype=args.dtype))
    options = TrainOptions(
        name=args.name,
        output=Path(args.output),
        ids=None if args.ids == "random" else Path(args.ids),
        random_id_dim=args.random_id_dim,
        train_ids=args.train_ids,
        teachers=tuple(Path(folder) for folder in args.teacher),
        distillation=DistillationSettings(weight=args.distill_weight, temperature=args.distill_temperature),
        lr_schedule=args.lr_schedule,
        eval_every=args.eval_every,
        valid_users=args.valid_users,
        patience=args.patience,
        max_history_length=args.max_history_length,
        instruction=args.instruction,
        response=args.response,
        head=args.head,
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=args.lora_targets.split(",")),
        learning_rate=args.lr,
        batch_size=args.batch_size,
        batch_order=args.batch_order,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        max_train_users=args.max_train_users,
        autocast_bf16=args.bf16,
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        checkpoint_every_s=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
        eval_split=args.eval_split,
        eval_users=args.eval_users,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    description = {
        "source": Path(data.source).name if Path(data.source).name != "sequences.txt" else f"{Path(data.source).parent.name}/sequences.txt",
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_interactions,
        "split": "leave-one-out",
    }
    train_bundle(backbone, split, options, description)
    return 0
