"""Training data: label readers (RetinaFace label.txt, WIDER), augmentation, synthetic scenes,
pseudo-labels, and the dataset / loader the training engines share."""

from trainer.data.dataset import (
    DataConfig,
    EpochConcat,
    FaceDataset,
    SyntheticDataset,
    batches_per_epoch,
    build_dataset,
    build_loader,
    collate,
)
from trainer.data.labels import FaceSample, read_label_txt, write_label_txt
from trainer.data.pseudo import list_images, pseudo_label
from trainer.data.wider import read_wider, read_wider_bbx_txt, read_wider_mat

__all__ = [
    "DataConfig",
    "EpochConcat",
    "FaceDataset",
    "FaceSample",
    "SyntheticDataset",
    "batches_per_epoch",
    "build_dataset",
    "build_loader",
    "collate",
    "list_images",
    "pseudo_label",
    "read_label_txt",
    "read_wider",
    "read_wider_bbx_txt",
    "read_wider_mat",
    "write_label_txt",
]
