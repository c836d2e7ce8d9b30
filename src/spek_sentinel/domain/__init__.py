"""Frozen value types shared by every layer; stdlib only."""
