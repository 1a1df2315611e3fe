"""Money: accounts and keys, billing (reserve, settle, refund), the ledger, rate limits and idempotency.
Imports the inputs, catalog and ground floor; never a provider call or HTTP."""
