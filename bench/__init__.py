"""`make bench`: measurements behind Studio's speed and memory goals, printed as one table."""
