"""Probes: turn the real world into samples. A probe that cannot see says so (an error
sample, UNKNOWN to the engine); it never reports a breach or a healthy zero it did not see."""
