"""What the Studio services share: settings, schema and SQL, events, broker topology, signing, storage."""
