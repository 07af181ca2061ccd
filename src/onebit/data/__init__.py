"""Datasets (CIFAR-10/100 readers, download) and on-device batch augmentation."""
