"""The serving stage: a BentoML service for an export dir's ONNX variant (see docs/SERVING.md).

Modules: ``service`` (the BentoML service), ``admission`` (admission control: auth, limits, overload, validation;
ASGI middleware), ``model_queue`` (the model thread, batching where it merges work, the bound on queued work),
``classify`` (the /classify request and response), ``ner``, ``explain``, ``metrics``, ``auth``,
``settings``, ``validation``, ``idempotency``, ``layout``, ``windows``; ONNX Runtime and the tokenizer are
:mod:`toolchain.inference.runtime`, `toolchain serve` is :mod:`toolchain.commands.serve`.
"""
