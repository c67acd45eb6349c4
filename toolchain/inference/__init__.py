"""Running a model: loading a run's model and its batched logits (PyTorch), the model's structure, and the
ONNX runtime that the export scores and the service serves (tokenize, plan calls, run)."""
