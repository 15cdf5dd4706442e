"""SMTP ingest: judges every recipient and answers 250 only once the message is in Kafka."""
