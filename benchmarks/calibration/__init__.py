"""The simulated engine against the real llama-server, same load (docs/simulated-engine.md)."""
