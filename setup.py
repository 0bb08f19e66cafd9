from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="se_transfer",
    version="0.1.0",
    description="Squeeze-and-Excitation backbones transferred to COCO detection, Places365 and CIFAR",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["se_transfer", "se_transfer.*"]),
    package_data={"se_transfer.ops": ["csrc/*.c"]},  # compiled on first use (se_transfer/ops/cpu_gate.py)
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pycocotools>=2.0.7",
        "albumentations==2.0.8",  # the last MIT release; never AlbumentationsX (AGPL)
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "numpy",
        "yacs>=0.1.8",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "matplotlib>=3.5",
    ],
    extras_require={
        "test": ["pytest>=7", "timm>=1.0"],
        "dev": ["pytest>=7", "timm>=1.0", "ruff>=0.5"],
    },
    entry_points={
        "console_scripts": [
            "se-train=se_transfer.cli:train_main",
            "se-train-d2=se_transfer.cli:train_net_d2_main",
            "se-compare=se_transfer.cli:compare_main",
            "se-eval-coco=se_transfer.cli:eval_coco_main",
            "se-visualize-coco=se_transfer.cli:visualize_main",
            "se-convert-weights=se_transfer.cli:convert_weights_main",
            "se-complexity=se_transfer.cli:complexity_main",
            "se-list-models=se_transfer.cli:list_models_main",
            "se-benchmark=se_transfer.cli:benchmark_main",
            "se-benchmark-cifar=se_transfer.cli:benchmark_cifar_main",
            "se-benchmark-places-input=se_transfer.cli:benchmark_places_main",
            "se-fault-inject=se_transfer.cli:fault_inject_main",
            "se-analyze-excitation=se_transfer.cli:analyze_excitation_main",
            "se-ablate=se_transfer.cli:ablate_se_main",
        ]
    },
)
