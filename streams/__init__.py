"""shelfstream streams: product events, the Faust app and its agents, the store and the cache."""
