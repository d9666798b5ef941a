"""Sentiment of a sentence with VADER (a lexicon shipped inside the vaderSentiment package)."""

from __future__ import annotations

import json

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from framework import Datum, Message

_analyzer = SentimentIntensityAnalyzer()


def classify(keys: list[str], datum: Datum) -> Message:
    text = datum.value.decode("utf-8", errors="replace")
    score = _analyzer.polarity_scores(text)["compound"]
    label = "positive" if score >= 0.05 else "negative" if score <= -0.05 else "neutral"
    body = json.dumps({"text": text, "label": label, "score": round(score, 3)})
    return Message(body.encode(), tags=[label])
