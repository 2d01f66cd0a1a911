"""The probe agent: consumes scan commands, probes safely and rate-limited, publishes events."""
