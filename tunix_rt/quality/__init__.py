"""The quality loop's core: predictions, scoring, statistics, leaderboards, gates, the judge cache."""
