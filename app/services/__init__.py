"""Business logic: keyword-only functions taking a session; they flush, never commit."""
