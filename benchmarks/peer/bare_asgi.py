"""The floor of a Python serving stack: a one-file ASGI server, the peer the serving targets compare against.

    PEER_MODEL_FILE=.../model_quantized.onnx PEER_TOKENIZER_DIR=.../tokenizer PEER_LABELS=negative,neutral,positive \
    python -m uvicorn bare_asgi:app --app-dir benchmarks/peer --workers 2 --host 127.0.0.1 --port 3001 \
        --no-access-log --log-level warning

What the service would be with nothing but the model: uvicorn (the same HTTP stack as BentoML's workers),
N worker processes, ONNX Runtime on 1 intra-op thread per worker, the export's fast tokenizer (``tokenizers``,
truncating to ``PEER_MAX_LENGTH``), one model call per text run inline on the event loop, a softmax, and JSON
out. No auth, limits, metrics, validation, batching or queue: ``POST /classify`` with ``{"texts": [...]}``
answers ``[{"label": ..., "score": ...}]``; ``GET /readyz`` answers 200 once the model is loaded.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def load():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(os.environ["PEER_MODEL_FILE"], sess_options=options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(os.path.join(os.environ["PEER_TOKENIZER_DIR"], "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(os.environ.get("PEER_MAX_LENGTH", "128")))
    return session, tokenizer, [i.name for i in session.get_inputs()], os.environ["PEER_LABELS"].split(",")


SESSION, TOKENIZER, INPUTS, LABELS = load()


def classify(text: str) -> dict:
    encoding = TOKENIZER.encode(text)
    feed = {"input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
    logits = SESSION.run(None, {name: feed[name] for name in INPUTS})[0][0]
    exp = np.exp(logits - logits.max())
    probs = exp / exp.sum()
    best = int(probs.argmax())
    return {"label": LABELS[best], "score": float(probs[best])}


async def respond(send, status: int, payload) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] in ("/readyz", "/livez"):
        return await respond(send, 200, {"ready": True})
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        texts = json.loads(body)["texts"]
        answer = [classify(text) for text in texts]
    except (ValueError, KeyError, TypeError) as exc:
        return await respond(send, 400, {"error": str(exc)})
    await respond(send, 200, answer)
