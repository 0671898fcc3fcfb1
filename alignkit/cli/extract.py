"""`alignkit` commands: extract (stub until its module lands)."""
