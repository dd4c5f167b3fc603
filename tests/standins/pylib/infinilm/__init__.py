"""Stand-in for InfiniLM (tests only)."""
