"""Backtesting: recorded samples through engine and policy, every decision printed."""
