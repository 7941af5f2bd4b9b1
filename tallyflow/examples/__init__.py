"""The example meter catalog, price book, limits and events, shipped as package data so the
demo and the docs' commands work after `pip install`, not only in a checkout."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
METERS = HERE / "meters.yaml"
PRICES = HERE / "prices.yaml"
EVENTS = HERE / "events.jsonl"
LIMITS = HERE / "limits.yaml"
