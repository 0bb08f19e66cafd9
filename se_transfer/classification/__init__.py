"""Classification task: CIFAR-10/100 training and evaluation (Places365 arrives later)."""
