"""The Kafka side: the wire format of every topic, producing and consuming, connection settings."""
