"""Identity's HTTP routes: API keys (admin), users (admin), and the caller's own `/me`."""
