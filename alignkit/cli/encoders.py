"""`alignkit` commands: encoders (stub until its module lands)."""
