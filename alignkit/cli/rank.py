"""`alignkit` commands: rank (stub until its module lands)."""
