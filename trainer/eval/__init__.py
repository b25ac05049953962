"""Evaluation: the official WIDER FACE protocol, running models on images, PR plots, model cost."""
