"""The webhook gateway: verified Skytells callbacks become durable events in RabbitMQ."""
