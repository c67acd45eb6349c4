"""`toolchain export`: merge, prune, ONNX export, graph optimization, int8 quantization, accuracy gate, report.

The entry point is :func:`toolchain.export.pipeline.export`; heavy imports happen inside functions.
"""
