"""Message-level parsing: turns decoded lines into records (the documented record layout)."""
