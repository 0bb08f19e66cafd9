"""Every configuration key, its default and what it means. YAML files and command-line overrides change these only."""

from yacs.config import CfgNode as CN

_C = CN()

# Which task runs: "classification" (CIFAR-10/100 or Places365, by DATA.DATASET) or "detection" (COCO).
_C.TASK = "classification"
# Where everything of a run goes: config.yaml, metrics.jsonl, checkpoints, TensorBoard events, plots.
_C.OUTPUT_DIR = "./output"
# Seed of every random number generator (model init, data order, augmentation). Runs with the same seed and config
# on the same hardware give the same weights (CPU: bit for bit).
_C.SEED = 0
# Iterations between two lines of the log / metrics.jsonl (also how often a non-finite loss is looked for).
_C.LOG_PERIOD = 20

_C.MODEL = CN()
# Registered model name (se_transfer.models.list_models()), e.g. se_resnet110, resnet110, se_resnet50.
_C.MODEL.ARCH = "se_resnet20"
# Weights to start from (local file: our checkpoints, or any public layout for ImageNet models). Empty: random init.
# With --eval-only: the weights evaluated.
_C.MODEL.WEIGHTS = ""
# "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
_C.MODEL.DEVICE = "auto"
# Classifier outputs (classification) or object classes without background (detection); 0: the data set's count.
_C.MODEL.NUM_CLASSES = 0
# Extra constructor arguments of the model (e.g. {"reduction": 8, "se_variant": "post"}); unknown names are errors.
_C.MODEL.KWARGS = CN(new_allowed=True)
# Store activations channels_last (NHWC): faster convolutions on GPUs with tensor cores.
_C.MODEL.CHANNELS_LAST = False
# torch.compile mode: "" (eager), "default", "reduce-overhead" (CUDA graphs) or "max-autotune".
_C.MODEL.COMPILE = ""
# How SE blocks are computed: "auto" (fused Triton kernels on CUDA; on the CPU the PyTorch ops, with the squeeze
# taken from the input of the last 1x1 conv at inference), "eager" (the plain PyTorch ops everywhere) or "triton"
# (insist on the fused kernels: an error where they cannot run). Same parameters and results (up to rounding).
_C.MODEL.SE_IMPL = "auto"

# The trunk of an ImageNet-family MODEL.ARCH (detection: its res2..res5 feed the FPN; classification: fine-tuning).
_C.MODEL.BACKBONE = CN()
# Freeze the stem (1), stem + res2 (2, Detectron's choice, set in configs/coco), ... res5 (5); 0 trains everything.
_C.MODEL.BACKBONE.FREEZE_AT = 0
# Normalisation layers of the backbone: "BN", or "FrozenBN" (Detectron's choice for fine-tuning, set in configs/coco).
_C.MODEL.BACKBONE.NORM = "BN"
_C.MODEL.FPN = CN()
# Channels of the FPN outputs P2-P6.
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.RPN = CN()
# Proposals kept per image before / after NMS (training and test), and anchors sampled per image for the RPN loss.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.ROI_HEADS = CN()
# RoIs sampled per image for the box head loss.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
# Test: detections with a lower score are dropped; NMS IoU threshold; detections kept per image.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE = 100

_C.DATA = CN()
# Classification data set: "cifar10", "cifar100" or "places365".
_C.DATA.DATASET = "cifar10"
# Places365: training split "train-standard" or "train-challenge" (the paper trained on the challenge split).
_C.DATA.TRAIN_SPLIT = "train-standard"
# Places365: the 256x256 image folders (True: data_256_*, val_256) or the large ones (False: data_large_*, val_large).
_C.DATA.SMALL = True
# Folder holding the data set in its official layout (see datasets/README.md).
_C.DATA.ROOT = "./datasets"
# Write a small generated data set in the official format to DATA.ROOT first if none is there (demo and tests).
_C.DATA.GENERATE_DEMO = False
# Cutout square side in pixels for training (0: off; the paper's recipes: 16 for CIFAR-10, 8 for CIFAR-100).
_C.DATA.CUTOUT = 0

# Detection inputs: the shorter side is resized to a size drawn from MIN_SIZE_TRAIN (one value: single scale) with the
# longer side at most MAX_SIZE_TRAIN; tests use MIN_SIZE_TEST / MAX_SIZE_TEST. FLIP_PROB: horizontal flips in training.
_C.INPUT = CN()
# Classification inputs at ImageNet scale (Places365): training crop (RandomResizedCrop) and evaluation resize + crop.
_C.INPUT.CROP_SIZE = 224
_C.INPUT.RESIZE = 256
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.FLIP_PROB = 0.5

# Detection data sets by registered name (se_transfer.data.catalog.COCO_DATASETS), all under DATA.ROOT. The paper's
# minival protocol: TRAIN ("coco_2014_train", "coco_2014_valminusminival") = train2017, TEST ("coco_2014_minival",)
# = val2017.
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ("coco_2017_train",)
_C.DATASETS.TEST = ("coco_2017_val",)

_C.DATALOADER = CN()
# Worker processes per training process that read and augment images (detection).
_C.DATALOADER.NUM_WORKERS = 4
# Batch images of one orientation (landscape / portrait) together: less padding.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# Leave out of training the images without usable annotations.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# A missing image file: False stops with an error naming it; True leaves it out, counted and reported.
_C.DATALOADER.SKIP_MISSING_IMAGES = False

_C.SOLVER = CN()
# "SGD" (with MOMENTUM and NESTEROV) or "AdamW".
_C.SOLVER.OPTIMIZER = "SGD"
# Learning rate for the global batch SOLVER.IMS_PER_BATCH (no automatic scaling).
_C.SOLVER.BASE_LR = 0.1
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Images per iteration over all processes (each of N processes takes IMS_PER_BATCH / N).
_C.SOLVER.IMS_PER_BATCH = 128
# Length of training in epochs (> 0), or 0 to use SOLVER.MAX_ITER.
_C.SOLVER.EPOCHS = 0
# Length of training in iterations when EPOCHS is 0; when EPOCHS > 0, a positive MAX_ITER stops training early
# (the schedule still follows EPOCHS), so "SOLVER.MAX_ITER 100" on the command line caps any run.
_C.SOLVER.MAX_ITER = 0
# "multistep" (x GAMMA at each of STEPS), "cosine" (to 0 at the end) or "constant".
_C.SOLVER.LR_SCHEDULER = "multistep"
# Milestones of the multistep schedule: in epochs when EPOCHS > 0, else in iterations.
_C.SOLVER.STEPS = ()
_C.SOLVER.GAMMA = 0.1
# Fine-tuning: the learning rate of the pretrained part (classification: all but the head fc; detection: the
# backbone, not the FPN and heads) is BASE_LR times this (1: one LR for all).
_C.SOLVER.BACKBONE_LR_MULTIPLIER = 1.0
# Linear warm-up from WARMUP_FACTOR * BASE_LR over WARMUP_ITERS iterations (0: none).
_C.SOLVER.WARMUP_ITERS = 0
_C.SOLVER.WARMUP_FACTOR = 0.1
# Iterations between checkpoints (0: only the final one). Each is written atomically; last_checkpoint names the newest.
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# How many periodic checkpoints (model_XXXXXXX.pth) to keep, the newest (0: all). The one last_checkpoint names and
# model_final.pth are never deleted (detectron2's max_to_keep).
_C.SOLVER.CHECKPOINT_KEEP = 3
# Clip the gradient norm to this value (0: no clipping).
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# Mixed precision: "none", "bf16" or "fp16" (fp16 uses a gradient scaler).
_C.SOLVER.AMP = "none"
# The linear scaling rule, applied only when set (> 0) and different from the number of processes: IMS_PER_BATCH and
# BASE_LR are multiplied by world_size / REFERENCE_WORLD_SIZE; MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and
# TEST.EVAL_PERIOD divided by it (detectron2's rule). The scaled values are logged and written to config.yaml.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0

_C.TEST = CN()
# Iterations between evaluations during training (0: none); training always ends with one.
_C.TEST.EVAL_PERIOD = 0
# Images per evaluation batch over all processes.
_C.TEST.IMS_PER_BATCH = 500
# Places365: average the softmax over ten crops (corners, centre and their flips) instead of the centre crop.
_C.TEST.TEN_CROP = False
