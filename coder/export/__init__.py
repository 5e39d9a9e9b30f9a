"""ONNX export of a model folder (fp32, int8, fp16) and torch-vs-onnxruntime parity checks."""
