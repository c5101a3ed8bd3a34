"""The fault rehearsal: `python -m chaos` (`make chaos`) starts a private appliance,
kills its workers, relays and Redis, stops and fills Redis, reloads nginx, while
WeChat keeps delivering — and counts that every message is answered exactly once."""
