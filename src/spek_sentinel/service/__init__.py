"""Composition: wiring config, probes, engine, policy and actions together."""
