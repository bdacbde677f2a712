"""Pure-Python domain: plans, statuses, events, errors. Imports nothing else of crew."""
