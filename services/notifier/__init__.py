"""The notifier: tells clients' own servers of their generations' changes, as signed webhooks."""
