"""Deployment: ONNX export, int8 quantization and their checks against PyTorch (``python -m deploy.export``)."""
