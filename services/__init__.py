"""The three Studio processes: api, webhook (gateway) and persister."""
