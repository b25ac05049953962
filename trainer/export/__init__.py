"""Export a trained network to self-describing deployment files (ONNX, OpenVINO IR, TorchScript, INT8)."""

from trainer.export.exporter import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
