"""The serving stage: a BentoML service for an export dir's ONNX variant (see docs/SERVING.md).

Modules: ``service`` (the BentoML service), ``gate`` (auth, limits, overload: ASGI middleware),
``classify`` (the /classify request and response), ``runtime`` (ONNX Runtime and tokenizer),
``metrics``, ``auth``, ``settings``, ``validation``, ``cli`` (`toolchain serve`).
"""
