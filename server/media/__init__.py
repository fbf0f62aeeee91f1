"""Images of a request: where they may come from, how they are fetched, what they may cost."""
