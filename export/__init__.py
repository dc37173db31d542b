"""Model export: ``python -m export.onnx`` (ONNX, verified with onnxruntime) and
``python -m export.tensorrt`` (TensorRT engine, verified on the GPU). See README, "Export"."""
