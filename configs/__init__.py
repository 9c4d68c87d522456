"""The embedded default configuration and examples, shipped as package data."""
