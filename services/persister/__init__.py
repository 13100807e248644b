"""The persister: stores outputs in S3 and moves generations to their terminal state."""
