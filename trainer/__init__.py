"""FeatherFace trainer: V1 teacher, Nano-B student, distillation, B-FPGM pruning, evaluation, export."""
