"""Alert rules, the engine that evaluates them on the bus, and notifiers."""
