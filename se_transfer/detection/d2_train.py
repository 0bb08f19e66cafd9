"""``tools/train_net_d2.py``: detectron2's own train_net contract, with the SE backbones registered.

Arguments are detectron2's (``default_argument_parser``): ``--config-file``, ``--resume``, ``--eval-only``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url`` and trailing ``KEY VALUE`` overrides. Training is
detectron2's ``DefaultTrainer`` (its hooks, writers and LR schedule: metrics.json, TensorBoard events, log.txt,
checkpoints and ``last_checkpoint`` in OUTPUT_DIR) and evaluation its ``COCOEvaluator`` (the AP table, and
``inference/coco_instances_results.json``). Data sets are detectron2's builtin names (``coco_2017_train``,
``coco_2014_minival``, ...) under ``$DETECTRON2_DATASETS`` (default ``./datasets``).
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli.errors import UsageError  # bad config, missing file, contradicting weights: one line, exit status 2
from .backbone import BackboneConfigError
from .d2 import (
    INSTALL_HINT,
    add_se_transfer_config,
    checkpointer_class,
    merge_config_file,
    merge_overrides,
    register,
    resolve_config,
)

logger = logging.getLogger("se_transfer.detection.d2")


def setup_cfg(args: Any) -> Any:
    """The merged, resolved and frozen config of ``args`` (config file, then KEY VALUE overrides)."""
    from detectron2.config import get_cfg

    register()
    cfg = get_cfg()
    add_se_transfer_config(cfg)
    if args.config_file:
        merge_config_file(cfg, args.config_file)
    merge_overrides(cfg, args.opts)
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but this machine has no CUDA device: add MODEL.DEVICE cpu"
        )
    if cfg.SOLVER.CHECKPOINT_PERIOD < 1:
        raise UsageError(
            f"SOLVER.CHECKPOINT_PERIOD {cfg.SOLVER.CHECKPOINT_PERIOD}: detectron2's periodic checkpointer needs a "
            "positive period; for the final checkpoint only, give one above SOLVER.MAX_ITER"
        )
    if args.resume:
        # detectron2 resumes from OUTPUT_DIR/last_checkpoint and ignores MODEL.WEIGHTS; the backbone must then be
        # the one that checkpoint was trained as, whatever MODEL.WEIGHTS names.
        tag = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
        last = Path(cfg.OUTPUT_DIR) / tag.read_text().strip() if tag.is_file() else None
        if last is not None and last.is_file():
            cfg.MODEL.WEIGHTS = str(last)
    spec = resolve_config(cfg)
    if args.eval_only and spec is not None and spec.source != "detector":
        raise UsageError(
            f"--eval-only: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS or '(empty)'} holds no trained detector (backbone weights "
            "only, so the FPN and heads would be random); give a detector checkpoint such as OUTPUT_DIR/model_final.pth"
        )
    cfg.freeze()
    return cfg


def _allow_cpu_ddp() -> None:
    """Let DefaultTrainer wrap a CPU model in DDP (gloo).

    detectron2's create_ddp_model gives DDP ``device_ids=[local_rank]`` even for a CPU model, which DDP refuses; a
    CPU model needs ``device_ids=None``. DefaultTrainer calls it by its module-level name, which gets this wrapper."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "se_transfer_cpu_aware", False):
        return

    def create_ddp_model(model, **kwargs):
        if all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    create_ddp_model.se_transfer_cpu_aware = True
    defaults.create_ddp_model = create_ddp_model


def check_datasets(cfg: Any, eval_only: bool = False) -> None:
    """Every data set the run reads is registered and its files exist (before any worker starts or any json loads)."""
    import difflib

    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    keys = [("DATASETS.TEST", cfg.DATASETS.TEST)]
    if not eval_only:
        keys.insert(0, ("DATASETS.TRAIN", cfg.DATASETS.TRAIN))
    for key, names in keys:
        for name in names:
            if name not in DatasetCatalog.list():
                close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise UsageError(f"{key}: no data set named {name!r} is registered with detectron2{hint}")
            meta = MetadataCatalog.get(name)
            for what in ("json_file", "image_root"):
                path = meta.get(what, None)
                if path and not os.path.exists(path):
                    raise UsageError(
                        f"{key}: {name}: {what} {path} does not exist (detectron2 reads its builtin data sets under "
                        f"$DETECTRON2_DATASETS, now {root!r}; see datasets/README.md)"
                    )


def trainer_class() -> type:
    """detectron2's DefaultTrainer with COCOEvaluator and the SE-aware checkpointer (DDP on CPUs works too)."""
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    _allow_cpu_ddp()
    checkpointer = checkpointer_class()

    class Trainer(DefaultTrainer):
        """DefaultTrainer; evaluation is COCOEvaluator into OUTPUT_DIR/inference, checkpoints carry the backbone."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

        def build_hooks(self):
            # The checkpointer must be ours before the hooks capture it (PeriodicCheckpointer, resume_or_load).
            self.checkpointer = checkpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
            return super().build_hooks()

    return Trainer


def main(args: Any) -> Any:
    """One process's work: train (then evaluate) or, with --eval-only, evaluate a detector checkpoint."""
    from detectron2.engine import default_setup
    from detectron2.evaluation import verify_results
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    cfg = setup_cfg(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="se_transfer", abbrev_name="se")
    logger.info(
        "backbone %s from %s: INPUT.FORMAT %s, MODEL.PIXEL_MEAN %s, MODEL.PIXEL_STD %s (taken from the weights file "
        "where the config left them unset)",
        cfg.MODEL.SE_TRANSFER.ARCH,
        cfg.MODEL.WEIGHTS or "random initialisation",
        cfg.INPUT.FORMAT,
        list(cfg.MODEL.PIXEL_MEAN),
        list(cfg.MODEL.PIXEL_STD),
    )
    trainer = trainer_class()
    if args.eval_only:
        model = trainer.build_model(cfg)
        checkpointer_class()(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    t = trainer(cfg)
    t.resume_or_load(resume=args.resume)
    return t.train()


def argument_parser() -> Any:
    """detectron2's default_argument_parser, described for this tool."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(
        epilog="Examples:\n"
        "  python tools/train_net_d2.py --config-file configs/detectron2/faster_rcnn_se_resnet50_fpn_2x.yaml "
        "--num-gpus 8 MODEL.WEIGHTS se_resnet50.pth\n"
        "  python tools/train_net_d2.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth\n"
        "  python tools/train_net_d2.py --config-file CFG --resume      # continue from OUTPUT_DIR/last_checkpoint"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over in an OUTPUT_DIR that holds an earlier run (deletes its checkpoints, metrics and events)",
    )
    return parser


def train_net_d2_main(argv: Sequence[str] | None = None) -> int:
    """Parse detectron2's arguments, check the config once, then launch one process per GPU (gloo on a CPU)."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        print(f"train_net_d2: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from detectron2.engine import launch

    from ..cli import WorkerError, claim_run_folder, collect_worker_errors, parse_train_args
    from ..engine.output_dir import OutputDirError

    args = parse_train_args(argument_parser(), argv)
    try:
        cfg = setup_cfg(args)
        check_datasets(cfg, args.eval_only)  # fail here, with one line, before any worker starts
        with claim_run_folder(cfg.OUTPUT_DIR, args), collect_worker_errors():
            launch(
                _worker,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except (*_EXPECTED, OutputDirError) as e:
        print(f"train_net_d2: error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"train_net_d2: {e}", file=sys.stderr)
        return 2
    return 0


def _worker(args: Any) -> None:
    from detectron2.utils import comm

    from ..cli import report_error

    if comm.get_world_size() == 1:  # one process: train_net_d2_main reports what it raises
        main(args)
        return
    try:
        main(args)
    except _EXPECTED as e:
        report_error(e, comm.get_rank())  # the traceback to log.txt, the line to the launching process
        sys.exit(2)


_EXPECTED = (UsageError, BackboneConfigError, FileNotFoundError, ValueError)
