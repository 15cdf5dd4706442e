"""Delivery: workers that take a pool's queue from Kafka to the recipients' mail servers."""
