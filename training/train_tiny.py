"""Train a classifier with TRADES (or a natural / PGD-AT baseline), evaluate it, export an artifact.

    python training/train_tiny.py --data /path/to/tiny-imagenet-200            # paper setting
    python training/train_tiny.py --dataset fashion_mnist --arch small_cnn ...  # CPU-sized
    torchrun --nproc_per_node 8 training/train_tiny.py ...                    # several GPUs

Every epoch writes an atomic checkpoint and a metrics line; ``--resume`` continues a
killed run to the same weights. The run ends by exporting ``OUTPUT/artifact``
(docs/artifact.md) with the final white-box metrics (PGD-20; ``--final-autoattack`` adds
AutoAttack, docs/training.md "AutoAttack").
Exit codes: 0 done, 2 bad arguments or data, 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from avc_common.artifact import ArtifactError, save_artifact
from avc_common.atomic import atomic_write_text
from avc_common.cli import (
    HelpFormatter,
    add_alias,
    add_data,
    add_device,
    add_output,
    add_progress,
    add_threads,
    at_least,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    program,
    set_threads,
)
from avc_common.data.tiny_imagenet import DatasetLayoutError
from training import autoattack
from training.augment import AUGMENTATIONS
from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    restoring,
    save_checkpoint,
    set_rng_state,
)
from training.data import DATASETS, ImageDataset, load_dataset
from training.distributed import init_distributed, shutdown
from training.engine import Runtime, batches, evaluate_accuracy, native_bf16, train_one_epoch
from training.models import MODELS, create_model
from training.pgd import NORMS
from training.trades import LOSSES, AttackConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# Flags that define the run: a resumed run must keep them (others, e.g. --epochs, may change).
RUN_DEFINING = ("dataset", "arch", "loss", "norm", "epsilon", "step_size", "steps", "beta",
                "batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "lr_milestones",
                "lr_decay", "warmup_epochs", "augment", "drop_rate", "seed", "train_images")
# Named sets of defaults (``--recipe``); flags given on the command line still win.
# fmnist-cpu: the CPU recipe for Fashion-MNIST that docs/training.md explains choice by choice; fmnist64-cpu: the
# same on its 64x64x3 proxy of the competition's shape (docs/benchmarks.md "The 64x64x3 proxy").
RECIPES: dict[str, dict[str, Any]] = {
    "fmnist-cpu": {"dataset": "fashion_mnist", "arch": "small_cnn", "drop_rate": 0.0, "epsilon": 0.1,
                   "step_size": 0.025, "steps": 5, "batch_size": 128, "lr": 0.05, "lr_schedule": "onecycle",
                   "augment": "none", "precision": "auto", "channels_last": "on", "eval_images": 1000,
                   "eval_step_size": 0.01, "epochs": 8},
    "fmnist64-cpu": {"dataset": "fashion_mnist_64", "arch": "small_cnn_64", "drop_rate": 0.0, "epsilon": 0.1,
                     "step_size": 0.025, "steps": 5, "batch_size": 128, "lr": 0.05, "lr_schedule": "onecycle",
                     "augment": "none", "precision": "auto", "channels_last": "on", "eval_step_size": 0.01,
                     "epochs": 2},
}
# Architectures whose PGD-20 evaluation a CPU runs at the full sizes (1000 images per epoch, the whole test set).
CPU_SIZED_ARCHS = ("small_cnn",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program("python training/train_tiny.py"), description=__doc__.split("\n")[0],
                                epilog="Exit codes: 0 done, 2 bad arguments or data, 1 anything else.",
                                formatter_class=HelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="start from a named set of defaults (" + "; ".join(
                       f"{name}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r.items())
                       for name, r in RECIPES.items()) + "); other flags override it")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=sorted(DATASETS), default="tiny_imagenet", help="training data set")
    add_data(d, "data folder (Tiny ImageNet root with wnids.txt; Fashion-MNIST IDX files; "
                "Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    d.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST into --data")
    d.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="standard",
                   help="batched on-device augmentation preset (competition = the 550k-image expanded set)")
    d.add_argument("--train-images", metavar="N", type=non_negative_int, default=0,
                   help="use only the first N training images (0 = all)")
    m = p.add_argument_group("model and loss")
    m.add_argument("--arch", choices=sorted(MODELS), default="resnet18", help="network architecture")
    m.add_argument("--drop-rate", type=fraction, default=None, help="dropout rate (default: the arch's own)")
    m.add_argument("--loss", choices=sorted(LOSSES), default="trades", help="training loss")
    m.add_argument("--norm", choices=NORMS, default="linf", help="threat model of the inner maximisation")
    m.add_argument("--epsilon", type=non_negative_float, default=0.031, help="perturbation radius in [0,1] pixel scale")
    m.add_argument("--step-size", type=positive_float, default=0.007, help="inner ascent step size")
    m.add_argument("--steps", metavar="K", type=positive_int, default=10, help="inner ascent steps K")
    m.add_argument("--beta", type=non_negative_float, default=6.0, help="TRADES beta = 1/lambda (robustness weight)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", metavar="N", type=positive_int, default=76, help="training epochs")
    o.add_argument("--batch-size", metavar="N", type=positive_int, default=128, help="images per step per process")
    o.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate (SGD)")
    o.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum")
    o.add_argument("--weight-decay", type=non_negative_float, default=2e-4, help="SGD weight decay")
    o.add_argument("--lr-schedule", choices=("step", "cosine", "onecycle"), default="step",
                   help="per-iteration schedule: step decays at --lr-milestones; onecycle warms up then anneals")
    o.add_argument("--lr-milestones", type=fraction, nargs="+", default=[0.75, 0.9],
                   help="step schedule: fractions of training at which the lr is multiplied by --lr-decay")
    o.add_argument("--lr-decay", type=positive_float, default=0.1, help="step schedule decay factor")
    o.add_argument("--warmup-epochs", type=non_negative_float, default=0.0,
                   help="linear warm-up (step and cosine schedules)")
    o.add_argument("--seed", type=non_negative_int, default=0, help="seed for weights, data order and attacks")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-images", metavar="N", type=non_negative_int, default=None,
                   help="held-out test images evaluated after every epoch, 0 = skip (default: auto = 1000; "
                        "100 for a ResNet on a CPU, where PGD-20 takes seconds per image)")
    e.add_argument("--final-eval-images", metavar="N", type=at_least(-1), default=None,
                   help="test images for the final evaluation stored in the artifact, 0 = all, -1 = skip "
                        "(default: auto = 0; 1000 for a ResNet on a CPU, where all 10,000 take hours)")
    e.add_argument("--eval-steps", metavar="K", type=positive_int, default=20,
                   help="PGD steps of the evaluation attack")
    e.add_argument("--eval-epsilon", type=non_negative_float, default=None,
                   help="evaluation radius (default: --epsilon)")
    e.add_argument("--eval-step-size", type=positive_float, default=None,
                   help="evaluation PGD step size (default: eval epsilon / 10)")
    e.add_argument("--final-autoattack", action="store_true",
                   help="the final evaluation also runs AutoAttack's standard version (training/evaluate.py "
                        "--attack autoattack) on its images, at the evaluation radius; needs the "
                        f"{autoattack.EXTRA} extra, and takes far longer than PGD-20")
    e.add_argument("--eval-batch-size", metavar="N", type=positive_int, default=500,
                   help="images per evaluation batch (memory grows with it: docs/benchmarks.md "
                        "\"ResNet-18 at 64x64 on a CPU\")")
    r = p.add_argument_group("runtime")
    output = add_output(r, Path("runs/train"), "checkpoint.pt, metrics.jsonl, summary.json and artifact/")
    add_alias(r, "--output-dir", output)
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt if present")
    add_device(r, what="training and evaluation")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast for training (auto: bf16 where the device computes it natively: CUDA, or a "
                        "CPU with AVX512-BF16 or AMX; fp32 elsewhere, where bf16 is emulated and about 10x slower); "
                        "evaluation is fp32")
    r.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels_last memory format (auto: on for CUDA)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_threads(r)
    r.add_argument("--no-export", action="store_true", help="skip the artifact export at the end")
    add_progress(r)
    return p


def auto_eval_images(arch: str, device: torch.device) -> tuple[int, int]:
    """``(--eval-images, --final-eval-images)`` for a run that leaves them at auto.

    PGD-20 is 21 forward+backward passes per image. On a GPU, or for the small CNN on a CPU,
    1000 images per epoch and the whole test set at the end (0) take minutes. A ResNet on a CPU
    takes seconds per image (docs/benchmarks.md "ResNet-18 at 64x64 on a CPU"), so there an
    epoch's evaluation is 100 images, a few minutes and a coarse trend (about 5 points of
    standard error), and the artifact's is 1000 (about 1.6 points, an hour or so on 2 cores)
    rather than the hours of the full set.
    """
    if device.type == "cpu" and arch not in CPU_SIZED_ARCHS:
        return 100, 1000
    return 1000, 0


def _with_eval_sizes(args: argparse.Namespace, announce: bool) -> argparse.Namespace:
    """``args`` with the auto evaluation sizes filled in; ``announce`` says once on stderr what auto chose."""
    chosen = dict(zip(("eval_images", "final_eval_images"), auto_eval_images(args.arch, args.device)))
    auto = {k: v for k, v in chosen.items() if getattr(args, k) is None}
    if auto and announce:
        print(f"evaluation sized for {args.arch} on {args.device.type} (auto): "
              + " ".join(f"--{k.replace('_', '-')} {v}" + (" (all)" if k == "final_eval_images" and v == 0 else "")
                         for k, v in auto.items())
              + "; give the flag to change it", file=sys.stderr)
    return argparse.Namespace(**{**vars(args), **auto})


def _runtime(args: argparse.Namespace) -> Runtime:
    cuda = args.device.type == "cuda"
    native = native_bf16(args.device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native)
    if args.precision == "bf16" and not native:
        print(f"warning: --precision bf16 on {args.device}, which has no native bf16: autocast emulates it, about "
              f"10x slower than --precision fp32", file=sys.stderr)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
    return Runtime(args.device, bf16, channels_last)


def _scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, iters_per_epoch: int):
    """A per-iteration LR schedule built from torch's own schedulers."""
    total = args.epochs * iters_per_epoch
    if args.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total)
    warmup = round(args.warmup_epochs * iters_per_epoch)
    if args.lr_schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total - warmup, 1))
    else:
        milestones = [round(f * total) - warmup for f in args.lr_milestones]
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, args.lr_decay)
    if warmup == 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, 1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def _eval_subset(data: ImageDataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of the test split (the same every epoch and on resume)."""
    images, labels = torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels)
    if 0 < n < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
        images, labels = images[idx], labels[idx]
    return images, labels


def _eval_epsilon(args: argparse.Namespace) -> float:
    return args.eval_epsilon if args.eval_epsilon is not None else args.epsilon


def _evaluate(args, net, data, rt, n, desc, with_autoattack: bool = False) -> dict[str, float]:
    images, labels = _eval_subset(data, n, args.seed)
    eps = _eval_epsilon(args)
    step = args.eval_step_size if args.eval_step_size is not None else eps / 10
    metrics = evaluate_accuracy(net, images, labels, rt, args.eval_batch_size, eps, step,
                                args.eval_steps, args.norm, progress=args.progress, desc=desc)
    metrics.update(eval_images=len(images), eval_attack=f"PGD-{args.eval_steps} {args.norm} "
                   f"eps={eps:g} step={step:g}")
    if with_autoattack:
        cfg = autoattack.AutoAttackConfig(args.norm, eps, seed=args.seed)
        metrics.update(autoattack.autoattack_accuracy(net, images, labels, rt, args.eval_batch_size, cfg,
                                                      data.num_classes, progress=args.progress,
                                                      desc=f"{desc} autoattack"),
                       autoattack_attack=cfg.describe())
    return metrics


def _resume_point(args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--resume``, OUTPUT/checkpoint.pt read and checked against this run's flags before any work
    (None: no ``--resume``, or nothing to resume, so the run starts fresh)."""
    path = args.output / CHECKPOINT
    if not (args.resume and path.exists()):
        return None
    ckpt = load_checkpoint(path, {"model": dict, "optimizer": dict, "scheduler": dict, "rng": dict, "epoch": int,
                                  "history": list, "args": dict})
    changed = [k for k in RUN_DEFINING if ckpt["args"].get(k) != vars(args).get(k)]
    if changed:
        raise ValueError(f"cannot resume {path}: it was trained with different "
                         + ", ".join(f"--{k.replace('_', '-')} ({ckpt['args'].get(k)!r} there, "
                                     f"{vars(args).get(k)!r} now)" for k in changed))
    return ckpt


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; returns the summary (also written to OUTPUT/summary.json)."""
    ckpt = _resume_point(args)
    rt = _runtime(args)
    ctx = init_distributed(rt.device)
    if rt.device.type == "cuda":
        rt = Runtime(torch.device("cuda", ctx.local_rank), rt.bf16, rt.channels_last)
    set_threads(args.threads)
    out = args.output
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, args.data, args.download)
    args = _with_eval_sizes(args, announce=ctx.is_main)  # after loading: a bad --data gets its one error line alone
    train_x, train_y = torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels)
    if args.train_images:
        train_x, train_y = train_x[:args.train_images], train_y[:args.train_images]
    height, width, channels = data.input_shape
    kwargs = {} if args.drop_rate is None else {"drop_rate": args.drop_rate}
    net = create_model(args.arch, data.num_classes, channels, data.mean, data.std, **kwargs).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if args.compile else net
    model = DistributedDataParallel(forward) if ctx.enabled else forward
    cfg = AttackConfig(args.epsilon, args.step_size, args.steps, args.beta, args.norm)
    augment = AUGMENTATIONS[args.augment]
    sampler = DistributedSampler(range(math.ceil(len(train_x) * augment.epoch_multiplier)),
                                 num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed)
    iters_per_epoch = math.ceil(len(sampler) / args.batch_size)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = _scheduler(args, optimizer, iters_per_epoch)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        load_weights(net, ckpt["model"], out / CHECKPOINT, f"the {args.arch} model for {args.dataset}")
        with restoring(out / CHECKPOINT, "optimizer state"):
            optimizer.load_state_dict(ckpt["optimizer"])
        with restoring(out / CHECKPOINT, "scheduler state"):
            scheduler.load_state_dict(ckpt["scheduler"])
        with restoring(out / CHECKPOINT, "random generator state"):
            set_rng_state(ckpt["rng"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        if ctx.is_main:
            print(f"resumed {out / CHECKPOINT} after epoch {start_epoch}", file=sys.stderr)
    device_x, device_y = train_x.to(rt.device), train_y.to(rt.device)
    show = ctx.is_main and args.progress
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        stats = train_one_epoch(model, forward, LOSSES[args.loss], cfg, optimizer, scheduler, augment,
                                batches(device_x, device_y, order, args.batch_size), iters_per_epoch,
                                rt, f"epoch {epoch + 1}/{args.epochs}", show)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **stats}
        if ctx.is_main:
            if args.eval_images:
                record.update(_evaluate(args, net, data, rt, args.eval_images, "eval"))
            history.append(record)
            save_checkpoint(out / CHECKPOINT, model=net.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), epoch=epoch + 1, history=history,
                            args={k: str(v) if isinstance(v, (Path, torch.device)) else v
                                  for k, v in vars(args).items()})
            atomic_write_text(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))
            print(_epoch_line(record), file=sys.stderr)
        ctx.barrier()
    summary: dict[str, Any] = {"output_dir": str(out), "epochs": args.epochs, "history": history}
    if ctx.is_main:
        if args.final_eval_images >= 0:
            summary["final"] = _evaluate(args, net, data, rt, args.final_eval_images, "final eval",
                                         with_autoattack=args.final_autoattack)
        if not args.no_export:
            training = {k: getattr(args, k) for k in RUN_DEFINING if k not in ("dataset", "arch")}
            training.update(epochs=args.epochs, world_size=ctx.world_size,
                            train_seconds=sum(h["train_seconds"] for h in history))
            save_artifact(net.float().to("cpu", memory_format=torch.contiguous_format), out / "artifact",
                          input_shape=(height, width, channels), class_names=data.class_names,
                          arch=args.arch, dataset=args.dataset, training=training,
                          metrics=summary.get("final", history[-1] if history else {}))
            summary["artifact"] = str(out / "artifact")
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    shutdown(ctx)
    return summary


def _epoch_line(r: dict[str, Any]) -> str:
    line = (f"epoch {r['epoch']}: loss {r['train_loss']:.4f} train-acc {r['train_accuracy']:.4f} "
            f"{r['train_images_per_s']:.0f} img/s {r['train_seconds']:.0f}s")
    if "clean_accuracy" in r:
        line += f" | clean {r['clean_accuracy']:.4f} pgd {r['pgd_accuracy']:.4f} ({r['eval_images']} images)"
    return line


def _print_summary(summary: dict[str, Any]) -> None:
    final = summary.get("final") or (summary["history"][-1] if summary["history"] else {})
    seconds = sum(h["train_seconds"] for h in summary["history"])
    print(f"\n== training done: {summary['epochs']} epochs, {seconds / 60:.1f} min of training ==")
    if "clean_accuracy" in final:
        print(f"clean accuracy {final['clean_accuracy']:.4f}  {final['eval_attack']} accuracy "
              f"{final['pgd_accuracy']:.4f}  on {final['eval_images']} test images")
    if "autoattack_accuracy" in final:
        print(f"{final['autoattack_attack']} accuracy {final['autoattack_accuracy']:.4f} (after "
              + ", ".join(f"{name} {final[autoattack.metric_key(name)]:.4f}" for name in autoattack.COMPONENTS)
              + f"; {final['autoattack_seconds']:.0f}s)")
    if "artifact" in summary:
        print(f"artifact: {summary['artifact']}")
    print(f"metrics: {Path(summary['output_dir']) / METRICS}  summary: {Path(summary['output_dir']) / SUMMARY}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags over the ``--recipe`` defaults over the parser's own defaults.

    A first pass reads ``--recipe`` alone (the full parse then checks its value), so every
    other flag is checked, and a deprecated spelling noted, once.
    """
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--recipe")
    parser = build_parser()
    parser.set_defaults(**RECIPES.get(first.parse_known_args(argv)[0].recipe, {}))
    args = parser.parse_args(argv)
    if args.final_autoattack:  # checked now: the run would otherwise fail only after all its training
        if not autoattack.available():
            parser.error(f"--final-autoattack: {autoattack.MISSING}")
        if args.final_eval_images is not None and args.final_eval_images < 0:
            parser.error("--final-autoattack: not with --final-eval-images -1, which skips the final evaluation")
        if _eval_epsilon(args) == 0:
            parser.error("--final-autoattack: AutoAttack needs a radius > 0 (--eval-epsilon or --epsilon)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``python training/train_tiny.py`` / ``avc-train``: train, evaluate, export; returns the exit status."""
    args = parse_args(argv)
    try:
        summary = train(args)
    except CheckpointError as err:
        print(f"error: --resume {err}", file=sys.stderr)
        return 2
    except (DatasetLayoutError, ArtifactError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "final" in summary or "artifact" in summary or summary["history"]:
        _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
