"""A loaded model folder and its runtime: config and card, chunking, the PLM-ICD module, onnxruntime sessions, scoring."""
