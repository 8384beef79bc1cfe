"""Identity: API keys, users, bearer tokens, and the principal a request acts as."""
