"""The pure part: rule state machines and the policy. No I/O, no clocks; time is passed in."""
