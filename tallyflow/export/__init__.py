"""Export of exact usage to billing providers (Stripe, Orb, Lago) with a ledger:
docs/export.md."""
