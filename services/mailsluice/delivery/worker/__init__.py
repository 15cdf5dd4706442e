"""The delivery worker: a pool's queue from Kafka to the transport, offsets committed only
below the lowest unfinished record."""
