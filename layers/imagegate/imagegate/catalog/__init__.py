"""The catalog: what is sold (contracts), who serves it (routes data), prices and upstream credentials.
Imports only the ground floor."""
