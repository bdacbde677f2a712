"""LLM providers: the interface, the built-in offline provider, and (later) HTTP providers."""
