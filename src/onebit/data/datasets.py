"""What onebit knows about each dataset before reading it: the CIFAR files (official python format) and
every dataset's class count. Kept free of torch, so that configuration code can read it cheaply."""

from __future__ import annotations

DATASETS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "label_key": "labels",
        "num_classes": 10,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "label_key": "fine_labels",
        "num_classes": 100,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
    },
}

# classes per dataset: the CIFAR specs above, and ImageNet's 1,000 (an ImageFolder tree may have others:
# TrainConfig.classes)
DATASET_CLASSES = {**{name: spec["num_classes"] for name, spec in DATASETS.items()}, "imagenet": 1000}
