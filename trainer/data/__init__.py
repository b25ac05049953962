"""Training data: label readers (RetinaFace label.txt, WIDER), augmentation, synthetic scenes,
pseudo-labels, and the dataset / loader the training engines share."""
