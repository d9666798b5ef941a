"""Fraud scoring: each card transaction is enriched with the current rules (the `thresholds` side
input, refreshed every few seconds), scored by a fixed-weight logistic model and tagged `flagged`
when its fraud probability reaches the rules' `flagAbove`.

A transaction is a JSON object: `txn_id`, `account`, `amount`, `merchant_category`, `country`,
`home_country`, `card_present` and `ts` (epoch ms). The scored output holds exactly the columns
of the `fraud_flagged` table (see demo.py), so the PostgreSQL sink can upsert it as it is.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from framework import Datum, Message, side_input_json

HERE = Path(__file__).resolve().parent
THRESHOLDS_ENV = "FRAUD_THRESHOLDS"
TXN_FIELDS = {"txn_id": str, "account": str, "amount": (int, float), "merchant_category": str,
              "country": str, "home_country": str, "card_present": bool, "ts": int}
# The "model": logistic regression weights, fixed (trained offline in a real deployment).
WEIGHTS = {"bias": -4.2, "amount_ratio": 1.5, "foreign": 1.2, "high_risk_country": 2.0,
           "card_not_present": 1.0, "night": 0.8}
AMOUNT_RATIO_CAP = 5.0  # beyond 5x the category's limit the amount adds no more evidence


def load_thresholds() -> dict[str, Any]:
    """Side input: the rules file ($FRAUD_THRESHOLDS, else thresholds.json beside this module).
    A broken edit raises, so the manager keeps the previous rules in force."""
    path = Path(os.environ.get(THRESHOLDS_ENV) or HERE / "thresholds.json")
    rules = json.loads(path.read_text())
    if not isinstance(rules.get("version"), int):
        raise ValueError(f"{path}: version must be an integer")
    if not 0 < rules.get("flagAbove", 0) < 1:
        raise ValueError(f"{path}: flagAbove must be a probability between 0 and 1")
    limits = rules.get("categoryLimits")
    if not isinstance(limits, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in limits.values()) \
            or "default" not in limits:
        raise ValueError(f"{path}: categoryLimits must map categories (and 'default') to positive amounts")
    if not isinstance(rules.get("highRiskCountries"), list):
        raise ValueError(f"{path}: highRiskCountries must be a list of country codes")
    return rules


def parse_transaction(raw: bytes) -> dict[str, Any]:
    """The transaction in `raw`; a clear error naming the field otherwise (the message is dead-lettered)."""
    txn = json.loads(raw)
    if not isinstance(txn, dict):
        raise ValueError(f"a transaction must be a JSON object, got {type(txn).__name__}")
    for name, kind in TXN_FIELDS.items():
        if name not in txn:
            raise ValueError(f"transaction field {name!r} is missing")
        if not isinstance(txn[name], kind) or (kind is not bool and isinstance(txn[name], bool)):
            raise ValueError(f"transaction field {name!r} has the wrong type ({type(txn[name]).__name__})")
    return txn


def features(txn: dict[str, Any], rules: dict[str, Any]) -> dict[str, float]:
    limits = rules["categoryLimits"]
    limit = limits.get(txn["merchant_category"], limits["default"])
    hour = datetime.fromtimestamp(txn["ts"] / 1000, tz=timezone.utc).hour
    return {
        "amount_ratio": round(min(txn["amount"] / limit, AMOUNT_RATIO_CAP), 4),
        "foreign": float(txn["country"] != txn["home_country"]),
        "high_risk_country": float(txn["country"] in rules["highRiskCountries"]),
        "card_not_present": float(not txn["card_present"]),
        "night": float(hour < 6),
    }


def probability(f: dict[str, float]) -> float:
    z = WEIGHTS["bias"] + sum(WEIGHTS[name] * value for name, value in f.items())
    return 1.0 / (1.0 + math.exp(-z))


def enrich(keys: list[str], datum: Datum) -> Message:
    txn = parse_transaction(datum.value)
    rules = side_input_json("thresholds")
    out = {**txn, "features": features(txn, rules), "flag_above": rules["flagAbove"],
           "rules_version": rules["version"]}
    return Message(json.dumps(out).encode(), keys=[txn["account"]])


def scored_row(enriched: dict[str, Any]) -> dict[str, Any]:
    p = round(probability(enriched["features"]), 4)
    return {"txn_id": enriched["txn_id"], "account": enriched["account"], "amount": enriched["amount"],
            "merchant_category": enriched["merchant_category"], "country": enriched["country"],
            "score": p, "flagged": p >= enriched["flag_above"], "rules_version": enriched["rules_version"]}


def score(keys: list[str], datum: Datum) -> Message:
    row = scored_row(json.loads(datum.value))
    return Message(json.dumps(row).encode(), keys=[row["account"]], tags=["flagged"] if row["flagged"] else [])
